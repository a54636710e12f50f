#include "proxy/tap_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "proxy/log.h"
#include "proxy/tap/format.h"

namespace grelay::proxy {
namespace {

tap::TapLayoutOptions layoutOptions(const config::TapConfig& c, uint32_t workers) {
  tap::TapLayoutOptions o;
  // The listener's budget is shared by its workers' files.
  o.maxSize = c.max_size / (workers == 0 ? 1 : workers);
  return o;
}

tap::TapFileIdentity identity(const std::string& listener, uint32_t worker) {
  tap::TapFileIdentity id;
  id.listener = listener;
  id.worker = worker;
  id.pid = static_cast<uint32_t>(getpid());
  id.createdNs = tap::tapNowNs();
  id.salt = tap::tapRandomSalt();
  return id;
}

}  // namespace

TapWriter::TapWriter(relay::Ring& ring, int fd, std::string path, const config::TapConfig& config,
                     const std::string& listener, uint32_t worker, uint32_t workers,
                     metrics::ListenerStats& stats)
    : ring_(ring),
      fd_(fd),
      path_(std::move(path)),
      config_(config),
      listener_(listener),
      stats_(stats),
      layout_(identity(listener, worker), layoutOptions(config, workers)) {}

TapWriter::~TapWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

void TapWriter::start() {
  writeRecord(layout_.fileHeader());
}

TapWriter::Write* TapWriter::acquire() {
  Write* w = free_;
  if (w != nullptr) {
    free_ = w->nextFree;
  } else {
    writes_.push_back(std::make_unique<Write>(*this));
    w = writes_.back().get();
  }
  w->nextFree = nullptr;
  w->written = 0;
  ++inflight_;
  return w;
}

void TapWriter::release(Write* w) {
  w->chunk.reset();
  w->stream = nullptr;
  w->nextFree = free_;
  free_ = w;
  --inflight_;
}

void TapWriter::submit(Write& w) {
  if (w.stage == Stage::Combined && w.written == 0) {
    ring_.writev(fd_, w.iov, 2, w.offset, &w.done);
    return;
  }
  const uint8_t* data;
  uint32_t skip = w.written;
  switch (w.stage) {
    case Stage::Payload:
      data = w.chunk.data();
      break;
    case Stage::Staged:
      data = w.stageData;
      break;
    case Stage::Combined:
      // The rest of a short writev: the header went out first, then part of the payload.
      if (skip < w.record.size) {
        ring_.write(fd_, w.record.data() + skip, w.record.size - skip, w.offset + skip, &w.done);
      } else {
        ring_.write(fd_, w.chunk.data() + (skip - w.record.size), w.length - skip, w.offset + skip,
                    &w.done);
      }
      return;
    default:
      data = w.record.data();
      break;
  }
  ring_.write(fd_, data + skip, w.length - skip, w.offset + skip, &w.done);
}

void TapWriter::writeRecord(const tap::TapRecord& record) {
  if (failed_) {
    return;
  }
  Write* w = acquire();
  w->stage = Stage::Record;
  w->record = record;
  w->offset = record.offset;
  w->length = record.size;
  submit(*w);
}

void TapWriter::Write::onDone(int32_t res, uint32_t) noexcept {
  writer.completed(*this, res);
}

void TapWriter::completed(Write& w, int32_t res) {
  if (res > 0 && w.written + static_cast<uint32_t>(res) < w.length) {
    w.written += static_cast<uint32_t>(res);  // short write: the rest at the next offset
    submit(w);
    return;
  }
  const bool ok = res > 0;
  if (!ok) {
    fail(res == 0 ? -EIO : res);
  }
  switch (w.stage) {
    case Stage::Record:
    case Stage::Header:
      release(&w);
      break;
    case Stage::Payload:
      payloadDone(w, ok);
      break;
    case Stage::Combined:
    case Stage::Staged:
      combinedDone(w, ok);
      break;
  }
}

void TapWriter::combinedDone(Write& w, bool ok) {
  TapStream* stream = w.stream;
  stream->unwritten -= w.payload;
  if (ok) {
    stats_.tapBytes.add(w.payload);
  } else {
    stats_.tapDroppedBytes.add(w.payload);
    dropped_ += w.payload;
    // Headers went out with their payloads: one that now claims bytes that are not
    // there must not be read. A zero header ends the extent's data for readers.
    tap::TapRecord zero;
    zero.offset = w.offset;
    zero.size = sizeof(tap::ChunkHeader);
    ssize_t n = ::pwrite(fd_, zero.data(), zero.size, static_cast<off_t>(zero.offset));
    (void)n;
  }
  if (w.stage == Stage::Staged) {
    freeStages_.push_back(w.stageData);
    w.stageData = nullptr;
  }
  TapStreamOwner* owner = stream->owner;
  release(&w);
  owner->tapWriteFinished();
}

void TapWriter::payloadDone(Write& w, bool ok) {
  TapStream* stream = w.stream;
  stream->unwritten -= w.length;
  if (ok) {
    stats_.tapBytes.add(w.length);
  } else {
    stats_.tapDroppedBytes.add(w.length);
    dropped_ += w.length;
  }
  TapStreamOwner* owner = stream->owner;
  w.stream = nullptr;
  w.chunk.reset();
  if (ok && !failed_) {
    // The payload is on file: now its header may say so.
    w.stage = Stage::Header;
    w.offset = w.record.offset;
    w.length = w.record.size;
    w.written = 0;
    submit(w);
  } else {
    release(&w);
  }
  owner->tapWriteFinished();
}

void TapWriter::open(TapStream& stream, const tap::TapSessionInfo& info) {
  if (failed_) {
    return;
  }
  tap::TapRecord record;
  if (layout_.openSession(stream.session, info, &record) == tap::TapStatus::kOk) {
    stream.opened = true;
    writeRecord(record);
  } else {
    noteFull();
  }
}

void TapWriter::chunk(TapStream& stream, tap::Direction direction, const relay::ChunkRef& chunk) {
  const uint32_t n = chunk.size();
  if (!stream.opened) {
    stats_.tapDroppedBytes.add(n);
    dropped_ += n;
    return;
  }
  if (failed_) {
    gap(stream, direction, n, tap::GapReason::kWriteError);
    return;
  }
  if (stream.unwritten + n > config_.max_lag) {
    gap(stream, direction, n, tap::GapReason::kMaxLag);
    return;
  }
  tap::TapReservation r;
  if (layout_.reserveChunk(stream.session, direction, n, tap::Fit::kWhole, &r) !=
      tap::TapStatus::kOk) {
    noteFull();
    gap(stream, direction, n, tap::GapReason::kFull);
    return;
  }
  if (r.hasExtentHeader) {
    writeRecord(r.extentHeader);
  }
  tap::TapRecord header;
  layout_.commitChunk(stream.session, r, n, tap::tapNowNs(), &header);
  stream.unwritten += n;
  if (n <= kStagedChunkMax && header.offset + header.size == r.payloadOffset) {
    stageChunk(stream, direction, r, header, chunk);
    return;
  }
  // One write: the header right before its payload (a failure zeroes the header again).
  flushStage(stream.stages[tap::index(direction)]);
  Write* w = acquire();
  w->stage = Stage::Combined;
  w->record = header;
  w->stream = &stream;
  w->chunk = chunk;
  w->offset = header.offset;
  w->length = header.size + n;
  w->payload = n;
  w->iov[0] = {w->record.bytes.data(), header.size};
  w->iov[1] = {const_cast<uint8_t*>(chunk.data()), n};
  stream.owner->tapWriteStarted();
  submit(*w);
}

void TapWriter::stageChunk(TapStream& stream, tap::Direction direction,
                           const tap::TapReservation& r, const tap::TapRecord& header,
                           const relay::ChunkRef& chunk) {
  TapStage& st = stream.stages[tap::index(direction)];
  const uint32_t n = chunk.size();
  const uint32_t need = static_cast<uint32_t>(tap::alignUp(header.size + n));
  if (st.data != nullptr && (st.offset + st.used != header.offset || st.used + need > kStageSize)) {
    flushStage(st);  // not contiguous (a new extent), or full
  }
  if (st.data == nullptr) {
    if (freeStages_.empty()) {
      stageBuffers_.push_back(std::make_unique<uint8_t[]>(kStageSize));
      freeStages_.push_back(stageBuffers_.back().get());
    }
    st.data = freeStages_.back();
    freeStages_.pop_back();
    st.offset = header.offset;
    st.used = 0;
    st.payload = 0;
    st.since = monotonicNanos();
    st.stream = &stream;
    st.dirty = true;
    st.prevDirty = dirtyTail_;
    st.nextDirty = nullptr;
    (dirtyTail_ != nullptr ? dirtyTail_->nextDirty : dirtyHead_) = &st;
    dirtyTail_ = &st;
  }
  std::memcpy(st.data + st.used, header.data(), header.size);
  std::memcpy(st.data + st.used + header.size, chunk.data(), n);
  std::memset(st.data + st.used + header.size + n, 0, need - header.size - n);
  (void)r;
  st.used += need;
  st.payload += n;
}

void TapWriter::unlinkDirty(TapStage& st) {
  if (!st.dirty) {
    return;
  }
  (st.prevDirty != nullptr ? st.prevDirty->nextDirty : dirtyHead_) = st.nextDirty;
  (st.nextDirty != nullptr ? st.nextDirty->prevDirty : dirtyTail_) = st.prevDirty;
  st.prevDirty = st.nextDirty = nullptr;
  st.dirty = false;
}

void TapWriter::flushStage(TapStage& st) {
  if (st.data == nullptr) {
    return;
  }
  unlinkDirty(st);
  Write* w = acquire();
  w->stage = Stage::Staged;
  w->stageData = st.data;
  w->stream = st.stream;
  w->offset = st.offset;
  w->length = st.used;
  w->payload = st.payload;
  st.data = nullptr;
  st.used = 0;
  st.payload = 0;
  w->stream->owner->tapWriteStarted();
  if (failed_) {
    combinedDone(*w, false);
    return;
  }
  submit(*w);
}

void TapWriter::flushStages(TapStream& stream) {
  flushStage(stream.stages[0]);
  flushStage(stream.stages[1]);
}

uint64_t TapWriter::flushDue(uint64_t now) {
  while (dirtyHead_ != nullptr && dirtyHead_->since + kStageDelayNanos <= now) {
    flushStage(*dirtyHead_);
  }
  return dirtyHead_ != nullptr ? dirtyHead_->since + kStageDelayNanos : 0;
}

bool TapWriter::reserve(TapStream& stream, tap::Direction direction, uint32_t* maxLength,
                        tap::TapReservation* r) {
  if (!stream.opened || failed_ || stream.unwritten + *maxLength > config_.max_lag) {
    return false;
  }
  if (layout_.reserveChunk(stream.session, direction, *maxLength, tap::Fit::kCapToExtent, r) !=
      tap::TapStatus::kOk) {
    noteFull();
    return false;
  }
  if (r->hasExtentHeader) {
    writeRecord(r->extentHeader);
  }
  *maxLength = r->capacity;
  stream.unwritten += r->capacity;
  stream.owner->tapWriteStarted();  // the member's completion ends it
  return true;
}

void TapWriter::committed(TapStream& stream, const tap::TapReservation& r, uint32_t length,
                          tap::TapRecord* header) {
  stream.unwritten -= r.capacity - length;
  layout_.commitChunk(stream.session, r, length, tap::tapNowNs(), header);
}

void TapWriter::abandoned(TapStream& stream, const tap::TapReservation& r) {
  stream.unwritten -= r.capacity;
  layout_.abandonChunk(stream.session, r, false);
}

void TapWriter::memberDone(TapStream& stream, uint32_t length, const tap::TapRecord& header,
                           int32_t res) {
  if (res == -ECANCELED) {
    // The leader got nothing (EOF or an error): abandoned() already accounted for it.
    stream.owner->tapWriteFinished();
    return;
  }
  stream.unwritten -= length;
  if (res == static_cast<int32_t>(length)) {
    stats_.tapBytes.add(length);
    writeRecord(header);  // the payload is on file: now its header may say so
  } else {
    fail(res < 0 ? res : -EIO);  // a short file write means the disk is full
    stats_.tapDroppedBytes.add(length);
    dropped_ += length;
  }
  stream.owner->tapWriteFinished();
}

void TapWriter::dropped(TapStream& stream, tap::Direction direction, uint32_t length) {
  if (!stream.opened) {
    stats_.tapDroppedBytes.add(length);
    dropped_ += length;
    return;
  }
  gap(stream, direction, length,
      failed_ ? tap::GapReason::kWriteError
              : (layout_.full() ? tap::GapReason::kFull : tap::GapReason::kMaxLag));
}

void TapWriter::gap(TapStream& stream, tap::Direction direction, uint64_t bytes,
                    tap::GapReason reason) {
  stats_.tapDroppedBytes.add(bytes);
  dropped_ += bytes;
  tap::TapRecord record;
  if (layout_.recordGap(stream.session, direction, bytes, reason, tap::tapNowNs(), &record) ==
      tap::TapStatus::kOk) {
    writeRecord(record);
  }
}

void TapWriter::end(TapStream& stream, tap::Direction direction, tap::EndKind kind, int32_t error) {
  flushStage(stream.stages[tap::index(direction)]);
  if (!stream.opened || stream.session.ended(direction)) {
    return;
  }
  tap::TapRecord record;
  if (layout_.endDirection(stream.session, direction, kind, error, tap::tapNowNs(), &record) ==
      tap::TapStatus::kOk) {
    writeRecord(record);
  }
}

void TapWriter::close(TapStream& stream, tap::CloseReason reason, int32_t error) {
  flushStages(stream);
  if (!stream.opened || !stream.session.isOpen()) {
    return;
  }
  tap::TapRecord record;
  if (layout_.closeSession(stream.session, reason, error, tap::tapNowNs(), &record) ==
      tap::TapStatus::kOk) {
    writeRecord(record);
  }
}

void TapWriter::finish() {
  if (failed_ || fd_ < 0 || layout_.finished()) {
    return;
  }
  tap::TapRecord record;
  if (layout_.finish(dropped_, tap::tapNowNs(), &record) != tap::TapStatus::kOk) {
    return;
  }
  // The worker is stopping and nothing else is in flight: a plain write is enough.
  ssize_t n = ::pwrite(fd_, record.data(), record.size, static_cast<off_t>(record.offset));
  if (n != static_cast<ssize_t>(record.size)) {
    GRELAY_LOG_WARN("tap %s: cannot write the end record: %s", path_.c_str(),
                    n < 0 ? strerror(errno) : "short write");
  }
}

void TapWriter::fail(int32_t error) {
  if (failed_) {
    return;
  }
  failed_ = true;
  stats_.tapErrors.inc();
  GRELAY_LOG_ERROR("listener %s: tap %s disabled: write failed: %s; relaying goes on without it",
                   listener_.c_str(), path_.c_str(), strerror(-error));
}

void TapWriter::noteFull() {
  if (!fullLogged_ && layout_.full()) {
    fullLogged_ = true;
    GRELAY_LOG_WARN(
        "listener %s: tap %s reached its share of max_size (%llu bytes); recording "
        "stopped, further bytes are counted as dropped",
        listener_.c_str(), path_.c_str(), static_cast<unsigned long long>(layout_.fileSize()));
  }
}

}  // namespace grelay::proxy
