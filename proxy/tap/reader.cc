#include "proxy/tap/reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <unordered_map>

#include "proxy/tap/format.h"

namespace grelay::tap {
namespace {

template <typename T>
T load(const uint8_t* data, uint64_t offset) {
  T value;
  std::memcpy(&value, data + offset, sizeof(T));
  return value;
}

TapAddress fromWire(const AddressWire& w) {
  TapAddress a;
  if (w.family == 4 || w.family == 6) {
    a.family = w.family;
    a.port = w.port;
    a.scopeId = w.family == 6 ? w.scopeId : 0;
    std::memcpy(a.addr.data(), w.addr, w.family == 4 ? 4 : 16);
  }
  return a;
}

bool allZero(const uint8_t* p, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    if (p[i] != 0) {
      return false;
    }
  }
  return true;
}

std::string hex(uint64_t v) {
  char text[24];
  snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

// Size of the part of a block the crc covers; 0 for unknown types.
uint64_t fixedSize(uint16_t type) {
  switch (static_cast<BlockType>(type)) {
    case BlockType::kExtent:
      return sizeof(ExtentHeader);
    case BlockType::kSessionOpen:
      return sizeof(SessionOpenRecord);
    case BlockType::kDirectionEnd:
      return sizeof(DirectionEndRecord);
    case BlockType::kSessionClose:
      return sizeof(SessionCloseRecord);
    case BlockType::kGap:
      return sizeof(GapRecord);
    case BlockType::kFileEnd:
      return sizeof(FileEndRecord);
  }
  return 0;
}

enum class BlockCheck { kValid, kTruncated, kInvalid };

class Parser {
public:
  Parser(const uint8_t* data, uint64_t size, TapContents* contents, TapDiagnostics* diag)
      : data_(data), size_(size), contents_(contents), diag_(diag) {}

  bool run();

private:
  bool parseHeader();
  BlockCheck checkBlock(uint64_t pos, std::string* why) const;
  bool validChunkAt(uint64_t pos, uint64_t limit) const;
  uint64_t scanForBlock(uint64_t from) const;
  uint64_t scanForChunk(uint64_t from, uint64_t limit) const;
  void handleBlock(uint64_t pos, const BlockHeader& bh);
  void walkExtent(uint64_t pos, const ExtentHeader& eh);
  TapSessionContents& session(uint64_t id, uint64_t offset);
  void finishSessions();

  const uint8_t* data_;
  uint64_t size_;
  TapContents* contents_;
  TapDiagnostics* diag_;
  uint64_t salt_ = 0;
  uint64_t fileEndAt_ = 0;
  std::unordered_map<uint64_t, size_t> index_;
};

bool Parser::parseHeader() {
  if (size_ < sizeof(FileHeader)) {
    diag_->error(0, "file too short for a tap header (" + std::to_string(size_) + " bytes)");
    return false;
  }
  auto h = load<FileHeader>(data_, 0);
  if (std::memcmp(h.magic, kFileMagic.data(), sizeof(h.magic)) != 0) {
    diag_->error(0, "not a grelay tap file (bad magic)");
    return false;
  }
  const uint32_t stored = h.crc;
  h.crc = 0;
  if (crc32c(&h, sizeof(h)) != stored) {
    diag_->error(0, "file header checksum mismatch");
    return false;
  }
  if (h.version != kFormatVersion) {
    diag_->error(0, "unsupported tap format version " + std::to_string(h.version));
    return false;
  }
  if (h.headerSize < sizeof(FileHeader) || h.headerSize % kAlign != 0 || h.headerSize > size_) {
    diag_->error(0, "impossible header size " + std::to_string(h.headerSize));
    return false;
  }
  TapFileInfo& f = contents_->file;
  f.version = h.version;
  f.salt = h.salt;
  f.createdNs = h.createdNs;
  f.maxSize = h.maxSize;
  f.pid = h.pid;
  f.worker = h.worker;
  f.listener.assign(h.listener, strnlen(h.listener, sizeof(h.listener)));
  salt_ = h.salt;
  return true;
}

BlockCheck Parser::checkBlock(uint64_t pos, std::string* why) const {
  if (size_ - pos < sizeof(BlockHeader)) {
    *why = "truncated block header";
    return BlockCheck::kTruncated;
  }
  const auto bh = load<BlockHeader>(data_, pos);
  if (bh.magic != kBlockMagic) {
    *why = "bad block magic";
    return BlockCheck::kInvalid;
  }
  const uint64_t fixed = fixedSize(bh.type);
  if (fixed == 0) {
    *why = "unknown block type " + std::to_string(bh.type);
    return BlockCheck::kInvalid;
  }
  const bool extent = bh.type == static_cast<uint16_t>(BlockType::kExtent);
  if (bh.size % kAlign != 0 ||
      (extent ? bh.size < sizeof(ExtentHeader) + sizeof(ChunkHeader) : bh.size != fixed)) {
    *why = "impossible block size " + std::to_string(bh.size);
    return BlockCheck::kInvalid;
  }
  if (size_ - pos < fixed) {
    *why = "truncated block";
    return BlockCheck::kTruncated;
  }
  if (recordCrc(salt_, pos, data_ + pos, fixed, offsetof(BlockHeader, crc)) != bh.crc) {
    *why = "block checksum mismatch";
    return BlockCheck::kInvalid;
  }
  return BlockCheck::kValid;
}

uint64_t Parser::scanForBlock(uint64_t from) const {
  std::string why;
  for (uint64_t p = alignUp(from); p < size_ && size_ - p >= sizeof(BlockHeader); p += kAlign) {
    if (load<uint32_t>(data_, p) == kBlockMagic && checkBlock(p, &why) == BlockCheck::kValid) {
      return p;
    }
  }
  return size_;
}

bool Parser::validChunkAt(uint64_t pos, uint64_t limit) const {
  if (limit < pos || limit - pos < sizeof(ChunkHeader)) {
    return false;
  }
  const auto ch = load<ChunkHeader>(data_, pos);
  return ch.magic == kChunkMagic &&
         recordCrc(salt_, pos, data_ + pos, sizeof(ch), offsetof(ChunkHeader, crc)) == ch.crc;
}

uint64_t Parser::scanForChunk(uint64_t from, uint64_t limit) const {
  for (uint64_t p = alignUp(from); p < limit && limit - p >= sizeof(ChunkHeader); p += kAlign) {
    if (load<uint32_t>(data_, p) == kChunkMagic && validChunkAt(p, limit)) {
      return p;
    }
  }
  return limit;
}

TapSessionContents& Parser::session(uint64_t id, uint64_t offset) {
  auto [it, inserted] = index_.try_emplace(id, contents_->sessions.size());
  if (inserted) {
    contents_->sessions.emplace_back();
    contents_->sessions.back().sessionId = id;
    contents_->sessions.back().recordOffset = offset;
  }
  return contents_->sessions[it->second];
}

void Parser::walkExtent(uint64_t pos, const ExtentHeader& eh) {
  if (eh.direction > 1) {
    diag_->error(pos, "extent with invalid direction " + std::to_string(eh.direction));
    return;
  }
  TapStreamContents& stream = session(eh.sessionId, pos).streams[eh.direction];
  const uint64_t extentEnd = pos + eh.block.size;
  const uint64_t limit = std::min(extentEnd, size_);  // bytes of the extent in the file
  uint64_t q = pos + sizeof(ExtentHeader);
  while (q < limit && limit - q >= sizeof(ChunkHeader)) {
    const auto ch = load<ChunkHeader>(data_, q);
    const bool zero = allZero(data_ + q, sizeof(ChunkHeader));
    if (zero || !validChunkAt(q, limit)) {
      // Either the end of the extent's data or a header that was never (or wrongly) written:
      // look for a later valid header in the same extent.
      const uint64_t next = scanForChunk(q + kAlign, limit);
      if (next < limit) {
        diag_->error(q, zero ? "chunk header missing; " + std::to_string(next - q) +
                                   " bytes up to the next chunk skipped"
                             : "corrupt chunk header; " + std::to_string(next - q) +
                                   " bytes up to the next chunk skipped");
        q = next;
        continue;
      }
      if (!zero || !allZero(data_ + q, limit - q)) {
        // Bytes without a header: a receive dropped when its session ended, or a header
        // write that never happened. Nothing indexed is lost.
        diag_->note(q, std::to_string(limit - q) +
                           " bytes at the end of an extent carry no chunk header (ignored)");
      }
      return;
    }
    if (ch.length > extentEnd - q - sizeof(ChunkHeader)) {
      diag_->error(q, "chunk length " + std::to_string(ch.length) + " exceeds its extent");
      const uint64_t next = scanForChunk(q + kAlign, limit);
      if (next >= limit) {
        return;
      }
      q = next;
      continue;
    }
    if (ch.length == 0 || ch.streamOffset + ch.length < ch.streamOffset) {
      // The writer never commits an empty chunk, and no stream is 2^64 bytes long.
      diag_->error(q, ch.length == 0 ? "empty chunk (corrupt); skipped"
                                     : "chunk stream offset overflows; skipped");
      q = alignUp(q + sizeof(ChunkHeader) + ch.length);
      continue;
    }
    const uint64_t payload = q + sizeof(ChunkHeader);
    if (ch.length > size_ - payload) {
      diag_->error(q, "truncated chunk: header says " + std::to_string(ch.length) +
                          " bytes, the file holds " + std::to_string(size_ - payload));
      return;
    }
    stream.chunks.push_back(TapChunk{ch.streamOffset, ch.timeNs, payload, ch.length});
    q = alignUp(payload + ch.length);
  }
}

void Parser::handleBlock(uint64_t pos, const BlockHeader& bh) {
  switch (static_cast<BlockType>(bh.type)) {
    case BlockType::kExtent:
      walkExtent(pos, load<ExtentHeader>(data_, pos));
      return;
    case BlockType::kSessionOpen: {
      const auto r = load<SessionOpenRecord>(data_, pos);
      TapSessionContents& s = session(r.sessionId, pos);
      if (s.hasOpen) {
        diag_->error(pos, "duplicate open record for session " + std::to_string(r.sessionId));
        return;
      }
      s.hasOpen = true;
      s.recordOffset = pos;
      s.openTimeNs = r.timeNs;
      s.flags = r.flags;
      s.client = fromWire(r.client);
      s.local = fromWire(r.local);
      s.upstream = fromWire(r.upstream);
      return;
    }
    case BlockType::kDirectionEnd: {
      const auto r = load<DirectionEndRecord>(data_, pos);
      if (r.direction > 1 || (r.kind != static_cast<uint8_t>(EndKind::kFin) &&
                              r.kind != static_cast<uint8_t>(EndKind::kReset))) {
        diag_->error(pos, "invalid direction end record");
        return;
      }
      TapStreamContents& st = session(r.sessionId, pos).streams[r.direction];
      if (st.end) {
        diag_->error(pos, "duplicate end record for session " + std::to_string(r.sessionId));
        return;
      }
      st.end = TapEnd{static_cast<EndKind>(r.kind), r.timeNs, r.streamBytes, r.error};
      return;
    }
    case BlockType::kSessionClose: {
      const auto r = load<SessionCloseRecord>(data_, pos);
      TapSessionContents& s = session(r.sessionId, pos);
      if (s.close) {
        diag_->error(pos, "duplicate close record for session " + std::to_string(r.sessionId));
        return;
      }
      s.close = TapClose{r.timeNs, r.reason, r.error};
      return;
    }
    case BlockType::kGap: {
      const auto r = load<GapRecord>(data_, pos);
      if (r.direction > 1 || r.streamOffset + r.bytes < r.streamOffset) {
        diag_->error(pos, "invalid gap record");
        return;
      }
      session(r.sessionId, pos)
          .streams[r.direction]
          .gaps.push_back(TapGap{r.streamOffset, r.bytes, r.timeNs, r.reason});
      return;
    }
    case BlockType::kFileEnd: {
      const auto r = load<FileEndRecord>(data_, pos);
      TapFileInfo& f = contents_->file;
      f.finished = true;
      f.endTimeNs = r.timeNs;
      f.sessionsDeclared = r.sessions;
      f.droppedBytes = r.droppedBytes;
      f.full = (r.flags & kFileEndFull) != 0;
      fileEndAt_ = pos;
      return;
    }
  }
}

void Parser::finishSessions() {
  for (TapSessionContents& s : contents_->sessions) {
    for (size_t d = 0; d < 2; ++d) {
      TapStreamContents& st = s.streams[d];
      std::stable_sort(
          st.chunks.begin(), st.chunks.end(),
          [](const TapChunk& a, const TapChunk& b) { return a.streamOffset < b.streamOffset; });
      // Chunks covering the same stream bytes cannot both be right: keep the first.
      std::vector<TapChunk> kept;
      kept.reserve(st.chunks.size());
      uint64_t end = 0;
      for (const TapChunk& c : st.chunks) {
        if (!kept.empty() && c.streamOffset < end) {
          diag_->error(c.payloadOffset - sizeof(ChunkHeader),
                       "chunk overlaps stream bytes already recorded (session " +
                           std::to_string(s.sessionId) + ", " +
                           toString(static_cast<Direction>(d)) + ", stream offset " +
                           std::to_string(c.streamOffset) + "); ignored");
          continue;
        }
        kept.push_back(c);
        end = c.streamOffset + c.length;
      }
      st.chunks = std::move(kept);
      std::stable_sort(st.gaps.begin(), st.gaps.end(), [](const TapGap& a, const TapGap& b) {
        return a.streamOffset < b.streamOffset;
      });
    }
    if (!s.hasOpen) {
      diag_->error(s.recordOffset, "session " + std::to_string(s.sessionId) +
                                       " has no open record; it cannot be exported");
      uint64_t first = UINT64_MAX;
      for (const auto& st : s.streams) {
        for (const auto& c : st.chunks) {
          first = std::min(first, c.timeNs);
        }
      }
      s.openTimeNs = first == UINT64_MAX ? 0 : first;
    } else if (!s.close && contents_->file.finished) {
      diag_->note(s.recordOffset,
                  "session " + std::to_string(s.sessionId) + " was not closed in the file");
    }
  }
  std::stable_sort(contents_->sessions.begin(), contents_->sessions.end(),
                   [](const TapSessionContents& a, const TapSessionContents& b) {
                     if (a.openTimeNs != b.openTimeNs) {
                       return a.openTimeNs < b.openTimeNs;
                     }
                     return a.sessionId < b.sessionId;
                   });
}

bool Parser::run() {
  if (!parseHeader()) {
    return false;
  }
  uint64_t pos = load<FileHeader>(data_, 0).headerSize;
  while (pos < size_) {
    std::string why;
    const BlockCheck check = checkBlock(pos, &why);
    if (check == BlockCheck::kTruncated) {
      if (allZero(data_ + pos, size_ - pos)) {
        diag_->error(pos, "file ends with " + std::to_string(size_ - pos) +
                              " zero bytes where a block should start");
      } else {
        diag_->error(pos, "truncated: the file ends inside a block (" + why + ")");
      }
      break;
    }
    if (check == BlockCheck::kInvalid) {
      const uint64_t next = scanForBlock(pos + kAlign);
      if (allZero(data_ + pos, next - pos)) {
        diag_->error(pos, std::to_string(next - pos) +
                              " zero bytes where a block should start (a block whose header was "
                              "never written); skipped");
      } else {
        diag_->error(pos, why + "; " + std::to_string(next - pos) + " bytes skipped up to " +
                              (next < size_ ? "the next valid block at " + hex(next)
                                            : std::string("the end of the file")));
      }
      pos = next;
      continue;
    }
    const auto bh = load<BlockHeader>(data_, pos);
    if (contents_->file.finished) {
      diag_->error(pos, "block after the file-end record at " + hex(fileEndAt_));
    }
    handleBlock(pos, bh);
    pos += bh.size;
  }
  if (!contents_->file.finished) {
    diag_->error(size_,
                 "no file-end record: the file is unfinished (its writer is still "
                 "running, stopped abnormally, or its disk failed)");
  }
  finishSessions();
  return true;
}

}  // namespace

uint64_t TapStreamContents::recordedBytes() const {
  uint64_t total = 0;
  for (const TapChunk& c : chunks) {
    total += c.length;
  }
  return total;
}

uint64_t TapStreamContents::endOffset() const {
  uint64_t end = 0;
  if (!chunks.empty()) {
    end = chunks.back().streamOffset + chunks.back().length;
  }
  for (const TapGap& g : gaps) {
    end = std::max(end, g.streamOffset + g.bytes);
  }
  if (this->end) {
    end = std::max(end, this->end->streamBytes);
  }
  return end;
}

void TapDiagnostics::add(bool error, uint64_t offset, std::string message) {
  (error ? errors_ : notes_)++;
  if (items_.size() >= kMaxItems) {
    ++suppressed_;
    return;
  }
  items_.push_back(TapDiagnostic{error, offset, std::move(message)});
}

void TapDiagnostics::error(uint64_t offset, std::string message) {
  add(true, offset, std::move(message));
}

void TapDiagnostics::note(uint64_t offset, std::string message) {
  add(false, offset, std::move(message));
}

bool parseTap(const uint8_t* data, size_t size, TapContents* contents,
              TapDiagnostics* diagnostics) {
  *contents = TapContents{};
  if (data == nullptr) {
    size = 0;
  }
  static const uint8_t kEmpty[1] = {0};
  Parser parser(data != nullptr ? data : kEmpty, size, contents, diagnostics);
  return parser.run();
}

std::unique_ptr<MappedFile> MappedFile::open(const std::string& path, std::string* error) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = std::strerror(errno);
    return nullptr;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    *error = std::strerror(errno);
    ::close(fd);
    return nullptr;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = "not a regular file";
    ::close(fd);
    return nullptr;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return std::unique_ptr<MappedFile>(new MappedFile(nullptr, 0));
  }
  // Read, not mmap: a tap file is sparse (unwritten extent tails), and on a full tmpfs —
  // exactly where a tap stops after ENOSPC — a read fault on a hole must allocate a page
  // and the kernel sends SIGBUS instead. pread() returns zeros for holes.
  uint8_t* buf = static_cast<uint8_t*>(std::malloc(size));
  if (buf == nullptr) {
    *error = "out of memory reading " + std::to_string(size) + " bytes";
    ::close(fd);
    return nullptr;
  }
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, buf + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;  // truncated while reading: what was read is parsed (and reported short)
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return std::unique_ptr<MappedFile>(new MappedFile(buf, done));
}

MappedFile::~MappedFile() {
  std::free(const_cast<uint8_t*>(data_));
}

}  // namespace grelay::tap
