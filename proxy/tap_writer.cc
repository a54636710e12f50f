#include "proxy/tap_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "proxy/log.h"

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

void TapWriter::start() { writeRecord(layout_.fileHeader()); }

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
  const uint8_t* data =
      w.stage == Stage::Payload ? w.chunk.data() : w.record.data();
  ring_.write(fd_, data + w.written, w.length - w.written, w.offset + w.written, &w.done);
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

void TapWriter::Write::onDone(int32_t res, uint32_t) noexcept { writer.completed(*this, res); }

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
      release(&w);
      break;
    case Stage::Payload:
      payloadDone(w, ok);
      break;
    case Stage::Header:
      release(&w);
      break;
  }
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
  Write* w = acquire();
  w->stage = Stage::Payload;
  layout_.commitChunk(stream.session, r, n, tap::tapNowNs(), &w->record);
  w->stream = &stream;
  w->chunk = chunk;
  w->offset = r.payloadOffset;
  w->length = n;
  stream.unwritten += n;
  stream.owner->tapWriteStarted();
  submit(*w);
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

void TapWriter::end(TapStream& stream, tap::Direction direction, tap::EndKind kind,
                    int32_t error) {
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
    GRELAY_LOG_WARN("listener %s: tap %s reached its share of max_size (%llu bytes); recording "
                    "stopped, further bytes are counted as dropped",
                    listener_.c_str(), path_.c_str(),
                    static_cast<unsigned long long>(layout_.fileSize()));
  }
}

}  // namespace grelay::proxy
