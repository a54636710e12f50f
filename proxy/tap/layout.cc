#include "proxy/tap/layout.h"

#include <sys/random.h>
#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>

namespace grelay::tap {
namespace {

constexpr uint64_t kExtentOverhead = sizeof(ExtentHeader) + sizeof(ChunkHeader);

static_assert(sizeof(FileHeader) <= kMaxRecordSize);
static_assert(sizeof(SessionOpenRecord) <= kMaxRecordSize);
static_assert(sizeof(DirectionEndRecord) <= kMaxRecordSize);
static_assert(sizeof(SessionCloseRecord) <= kMaxRecordSize);
static_assert(sizeof(GapRecord) <= kMaxRecordSize);
static_assert(sizeof(FileEndRecord) <= kMaxRecordSize);
static_assert(sizeof(ExtentHeader) <= kMaxRecordSize);
static_assert(sizeof(ChunkHeader) <= kMaxRecordSize);

AddressWire toWire(const TapAddress& a) {
  AddressWire w{};
  w.family = a.known() ? a.family : 0;
  w.port = a.port;
  w.scopeId = a.scopeId;
  std::memcpy(w.addr, a.addr.data(), sizeof(w.addr));
  return w;
}

template <typename T>
void copyOut(const T& value, uint64_t offset, TapRecord* out) {
  out->offset = offset;
  out->size = sizeof(T);
  out->bytes.fill(0);
  std::memcpy(out->bytes.data(), &value, sizeof(T));
}

}  // namespace

const char* toString(TapStatus status) {
  switch (status) {
    case TapStatus::kOk:
      return "ok";
    case TapStatus::kFull:
      return "full";
    case TapStatus::kBadState:
      return "bad state";
    case TapStatus::kBadArgument:
      return "bad argument";
  }
  return "unknown";
}

TapLayout::TapLayout(const TapFileIdentity& identity, const TapLayoutOptions& options)
    : salt_(identity.salt), options_(options) {
  options_.firstExtentSize =
      static_cast<uint32_t>(alignUp(std::max<uint64_t>(options_.firstExtentSize, 256)));
  options_.maxExtentSize = static_cast<uint32_t>(
      alignUp(std::max<uint64_t>(options_.maxExtentSize, options_.firstExtentSize)));
  options_.minCappedPayload = std::max<uint32_t>(options_.minCappedPayload, 1);

  FileHeader h{};
  std::memcpy(h.magic, kFileMagic.data(), sizeof(h.magic));
  h.version = kFormatVersion;
  h.headerSize = sizeof(FileHeader);
  h.salt = salt_;
  h.createdNs = identity.createdNs;
  h.maxSize = options_.maxSize;
  h.pid = identity.pid;
  h.worker = identity.worker;
  std::memcpy(h.listener, identity.listener.data(),
              std::min(identity.listener.size(), sizeof(h.listener)));
  h.crc = 0;
  h.crc = crc32c(&h, sizeof(h));
  copyOut(h, 0, &fileHeader_);
}

uint64_t TapLayout::available() const {
  if (options_.maxSize == 0) {
    return std::numeric_limits<uint64_t>::max();
  }
  const uint64_t committed = used_ + headroom_;
  return committed >= options_.maxSize ? 0 : options_.maxSize - committed;
}

uint64_t TapLayout::allocate(uint64_t size) {
  const uint64_t offset = used_;
  used_ += size;
  return offset;
}

template <typename Record>
void TapLayout::seal(Record& rec, BlockType type, uint64_t offset, uint32_t size,
                     TapRecord* out) const {
  rec.block.magic = kBlockMagic;
  rec.block.type = static_cast<uint16_t>(type);
  rec.block.flags = 0;
  rec.block.size = size;
  rec.block.crc = 0;
  rec.block.crc = recordCrc(salt_, offset, &rec, sizeof(Record), offsetof(BlockHeader, crc));
  copyOut(rec, offset, out);
}

void TapLayout::dropPending(TapSession::Stream& stream) {
  if (stream.pending) {
    stream.pending = false;
    // A payload write may still land in the slot: never reuse it.
    stream.extentEnd = stream.writePos;
  }
}

TapStatus TapLayout::openSession(TapSession& session, const TapSessionInfo& info,
                                 TapRecord* record) {
  if (finished_ || session.state_ != TapSession::State::kIdle) {
    return TapStatus::kBadState;
  }
  if (full_ || available() < sizeof(SessionOpenRecord) + kSessionHeadroom) {
    full_ = true;
    return TapStatus::kFull;
  }
  SessionOpenRecord rec{};
  rec.sessionId = info.sessionId;
  rec.timeNs = info.timeNs;
  rec.flags = info.flags;
  rec.client = toWire(info.client);
  rec.local = toWire(info.local);
  rec.upstream = toWire(info.upstream);
  const uint64_t offset = allocate(sizeof(rec));
  seal(rec, BlockType::kSessionOpen, offset, sizeof(rec), record);

  headroom_ += kSessionHeadroom;
  ++openSessions_;
  ++sessionsOpened_;
  session.state_ = TapSession::State::kOpen;
  session.sessionId_ = info.sessionId;
  for (auto& s : session.streams_) {
    s = TapSession::Stream{};
    s.nextExtentSize = options_.firstExtentSize;
  }
  return TapStatus::kOk;
}

TapStatus TapLayout::reserveChunk(TapSession& session, Direction direction, uint32_t maxLength,
                                  Fit fit, TapReservation* reservation) {
  if (finished_ || !session.isOpen()) {
    return TapStatus::kBadState;
  }
  TapSession::Stream& s = session.streams_[index(direction)];
  if (s.ended || s.pending) {
    return TapStatus::kBadState;
  }
  if (maxLength == 0) {
    return TapStatus::kBadArgument;
  }
  if (fit == Fit::kWhole &&
      alignUp(kExtentOverhead + maxLength) > std::numeric_limits<uint32_t>::max()) {
    return TapStatus::kBadArgument;
  }
  if (full_) {
    return TapStatus::kFull;
  }

  // Payload bytes that must fit for the current extent to be used.
  const uint64_t need =
      fit == Fit::kWhole ? maxLength : std::min<uint64_t>(maxLength, options_.minCappedPayload);
  uint64_t room = 0;
  if (s.extentEnd > s.writePos + sizeof(ChunkHeader)) {
    room = s.extentEnd - s.writePos - sizeof(ChunkHeader);
  }

  reservation->hasExtentHeader = false;
  if (room < need) {
    const uint64_t minimum = alignUp(kExtentOverhead + need);
    uint64_t size = std::max<uint64_t>(s.nextExtentSize, minimum);
    const uint64_t avail = available();
    if (size > avail) {
      // Near the budget: a smaller extent is better than none.
      if (avail < minimum) {
        full_ = true;
        return TapStatus::kFull;
      }
      size = avail & ~(kAlign - 1);
    }
    const uint64_t offset = allocate(size);
    ExtentHeader eh{};
    eh.sessionId = session.sessionId_;
    eh.sequence = s.extentSequence++;
    eh.direction = static_cast<uint8_t>(direction);
    seal(eh, BlockType::kExtent, offset, static_cast<uint32_t>(size), &reservation->extentHeader);
    reservation->hasExtentHeader = true;
    s.writePos = offset + sizeof(ExtentHeader);
    s.extentEnd = offset + size;
    s.nextExtentSize = static_cast<uint32_t>(
        std::min<uint64_t>(uint64_t{s.nextExtentSize} * 2, options_.maxExtentSize));
    room = s.extentEnd - s.writePos - sizeof(ChunkHeader);
  }

  reservation->headerOffset = s.writePos;
  reservation->payloadOffset = s.writePos + sizeof(ChunkHeader);
  reservation->capacity = static_cast<uint32_t>(std::min<uint64_t>(room, maxLength));
  reservation->direction = direction;
  s.pending = true;
  s.pendingHeader = reservation->headerOffset;
  s.pendingCapacity = reservation->capacity;
  return TapStatus::kOk;
}

TapStatus TapLayout::commitChunk(TapSession& session, const TapReservation& reservation,
                                 uint32_t length, uint64_t timeNs, TapRecord* header) {
  if (finished_ || !session.isOpen()) {
    return TapStatus::kBadState;
  }
  TapSession::Stream& s = session.streams_[index(reservation.direction)];
  if (!s.pending) {
    return TapStatus::kBadState;
  }
  if (s.pendingHeader != reservation.headerOffset || length == 0 || length > s.pendingCapacity) {
    return TapStatus::kBadArgument;
  }
  ChunkHeader h{};
  h.magic = kChunkMagic;
  h.length = length;
  h.timeNs = timeNs;
  h.streamOffset = s.streamOffset;
  h.crc = recordCrc(salt_, reservation.headerOffset, &h, sizeof(h), offsetof(ChunkHeader, crc));
  copyOut(h, reservation.headerOffset, header);

  s.streamOffset += length;
  s.writePos = alignUp(reservation.payloadOffset + length);
  s.pending = false;
  return TapStatus::kOk;
}

TapStatus TapLayout::abandonChunk(TapSession& session, const TapReservation& reservation,
                                  bool payloadRegionDirty) {
  if (finished_ || !session.isOpen()) {
    return TapStatus::kBadState;
  }
  TapSession::Stream& s = session.streams_[index(reservation.direction)];
  if (!s.pending) {
    return TapStatus::kBadState;
  }
  if (s.pendingHeader != reservation.headerOffset) {
    return TapStatus::kBadArgument;
  }
  s.pending = false;
  if (payloadRegionDirty) {
    // The header slot stays zero, which ends this extent's data for readers.
    s.extentEnd = s.writePos;
  }
  return TapStatus::kOk;
}

TapStatus TapLayout::recordGap(TapSession& session, Direction direction, uint64_t bytes,
                               GapReason reason, uint64_t timeNs, TapRecord* record) {
  if (finished_ || !session.isOpen()) {
    return TapStatus::kBadState;
  }
  TapSession::Stream& s = session.streams_[index(direction)];
  if (s.ended || s.pending) {
    return TapStatus::kBadState;
  }
  if (bytes == 0) {
    return TapStatus::kBadArgument;
  }
  const uint64_t streamOffset = s.streamOffset;
  s.streamOffset += bytes;
  if (full_ || available() < sizeof(GapRecord)) {
    full_ = true;
    return TapStatus::kFull;
  }
  GapRecord rec{};
  rec.sessionId = session.sessionId_;
  rec.timeNs = timeNs;
  rec.streamOffset = streamOffset;
  rec.bytes = bytes;
  rec.direction = static_cast<uint8_t>(direction);
  rec.reason = static_cast<uint8_t>(reason);
  const uint64_t offset = allocate(sizeof(rec));
  seal(rec, BlockType::kGap, offset, sizeof(rec), record);
  return TapStatus::kOk;
}

TapStatus TapLayout::endDirection(TapSession& session, Direction direction, EndKind kind,
                                  int32_t error, uint64_t timeNs, TapRecord* record) {
  if (finished_ || !session.isOpen()) {
    return TapStatus::kBadState;
  }
  TapSession::Stream& s = session.streams_[index(direction)];
  if (s.ended) {
    return TapStatus::kBadState;
  }
  dropPending(s);
  s.ended = true;
  DirectionEndRecord rec{};
  rec.sessionId = session.sessionId_;
  rec.timeNs = timeNs;
  rec.streamBytes = s.streamOffset;
  rec.direction = static_cast<uint8_t>(direction);
  rec.kind = static_cast<uint8_t>(kind);
  rec.error = error;
  headroom_ -= sizeof(rec);
  const uint64_t offset = allocate(sizeof(rec));
  seal(rec, BlockType::kDirectionEnd, offset, sizeof(rec), record);
  return TapStatus::kOk;
}

TapStatus TapLayout::closeSession(TapSession& session, CloseReason reason, int32_t error,
                                  uint64_t timeNs, TapRecord* record) {
  if (finished_ || !session.isOpen()) {
    return TapStatus::kBadState;
  }
  for (auto& s : session.streams_) {
    dropPending(s);
    if (!s.ended) {
      headroom_ -= sizeof(DirectionEndRecord);  // never written
    }
    s.ended = true;
  }
  SessionCloseRecord rec{};
  rec.sessionId = session.sessionId_;
  rec.timeNs = timeNs;
  rec.reason = static_cast<uint32_t>(reason);
  rec.error = error;
  headroom_ -= sizeof(rec);
  const uint64_t offset = allocate(sizeof(rec));
  seal(rec, BlockType::kSessionClose, offset, sizeof(rec), record);
  session.state_ = TapSession::State::kClosed;
  --openSessions_;
  return TapStatus::kOk;
}

TapStatus TapLayout::finish(uint64_t droppedBytes, uint64_t timeNs, TapRecord* record) {
  if (finished_) {
    return TapStatus::kBadState;
  }
  FileEndRecord rec{};
  rec.timeNs = timeNs;
  rec.sessions = sessionsOpened_;
  rec.droppedBytes = droppedBytes;
  rec.flags = full_ ? kFileEndFull : 0;
  headroom_ -= sizeof(rec);
  const uint64_t offset = allocate(sizeof(rec));
  seal(rec, BlockType::kFileEnd, offset, sizeof(rec), record);
  finished_ = true;
  return TapStatus::kOk;
}

std::string tapFileName(std::string_view listener, uint32_t worker, uint64_t createdNs,
                        uint32_t pid, uint32_t sequence) {
  std::string name;
  for (char c : listener) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    name += ok ? c : '_';
  }
  if (name.empty() || name[0] == '.') {
    name.insert(0, "_");
  }
  const time_t secs = static_cast<time_t>(createdNs / 1'000'000'000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char stamp[32];
  strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
  return name + "-w" + std::to_string(worker) + "-" + stamp + "-" + std::to_string(pid) +
         (sequence > 0 ? "-" + std::to_string(sequence) : std::string()) + ".gtap";
}

uint64_t tapNowNs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t tapRandomSalt() {
  uint64_t salt = 0;
  if (getrandom(&salt, sizeof(salt), 0) != sizeof(salt)) {
    // No entropy source: time and address bits still make a per-file value.
    salt = tapNowNs() ^ reinterpret_cast<uintptr_t>(&salt);
  }
  return salt;
}

}  // namespace grelay::tap
