// The tap of one listener on one worker: lays out its file with tap::TapLayout and writes
// it through the worker's ring, from the same buffers the relay sends (FORMAT.md).
//
// The tap never slows the relay: payload writes are fire-and-forget; a session whose
// unfinished tap writes exceed tap.max_lag records a gap instead; past max_size the file
// stops growing (bytes counted as dropped); a write error (ENOSPC, EIO...) disables this
// tap for good (counted, logged) and the relay goes on.
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"
#include "proxy/tap/layout.h"
#include "relay/buffer.h"
#include "relay/completion.h"
#include "relay/ring.h"

namespace grelay::proxy {

// Told when a session's payload writes start and finish, so the session outlives them.
class TapStreamOwner {
public:
  virtual void tapWriteStarted() noexcept = 0;
  virtual void tapWriteFinished() noexcept = 0;

protected:
  ~TapStreamOwner() = default;
};

// Small chunks of one direction, staged with their headers as they lie in the stream's
// extent ([header | payload | pad] ...), so many chunks cost one WRITE (file writes through
// io_uring go to io-wq: each one is a thread hand-off).
struct TapStage {
  uint8_t* data = nullptr;  // a buffer of the writer's stage pool (nullptr = none)
  uint64_t offset = 0;      // file offset of data[0]
  uint32_t used = 0;
  uint32_t payload = 0;  // payload bytes staged (what tap_bytes counts)
  uint64_t since = 0;    // monotonic ns of the first staged chunk
  struct TapStream* stream = nullptr;
  TapStage* nextDirty = nullptr;
  TapStage* prevDirty = nullptr;
  bool dirty = false;
};

// A session's tap state.
struct TapStream {
  tap::TapSession session;
  uint64_t unwritten = 0;  // payload bytes whose writes have not completed (staged too)
  TapStreamOwner* owner = nullptr;
  bool opened = false;
  std::array<TapStage, 2> stages;  // by direction
};

class TapWriter {
public:
  TapWriter(relay::Ring& ring, int fd, std::string path, const config::TapConfig& config,
            const std::string& listener, uint32_t worker, uint32_t workers,
            metrics::ListenerStats& stats);
  ~TapWriter();
  TapWriter(const TapWriter&) = delete;
  TapWriter& operator=(const TapWriter&) = delete;

  // Small chunks wait in a stage at most this long before they are written.
  static constexpr uint64_t kStageDelayNanos = 5'000'000;
  static constexpr uint32_t kStageSize = 16 * 1024;
  static constexpr uint32_t kStagedChunkMax = 4 * 1024;  // larger chunks: one WRITEV

  // Writes the file header.
  void start();
  // Writes the stages older than kStageDelayNanos; returns when the next one is due (0 =
  // none). Called by the worker after each round of completions.
  uint64_t flushDue(uint64_t now);
  bool active() const { return !failed_; }

  void open(TapStream& stream, const tap::TapSessionInfo& info);
  // A chunk whose length is known (mainline and copy paths).
  void chunk(TapStream& stream, tap::Direction direction, const relay::ChunkRef& chunk);
  // Group path: the payload is written by a group member at an offset fixed before the
  // received length is known. reserve() caps the receive (*maxLength) to the stream's
  // extent; false = this chunk is not recorded (full, lagging, disabled): call dropped()
  // with its length once known. After the leader: committed() with the length (the
  // header is kept in *header) or abandoned(); after the tap member: memberDone().
  bool reserve(TapStream& stream, tap::Direction direction, uint32_t* maxLength,
               tap::TapReservation* reservation);
  void committed(TapStream& stream, const tap::TapReservation& reservation, uint32_t length,
                 tap::TapRecord* header);
  void abandoned(TapStream& stream, const tap::TapReservation& reservation);
  void memberDone(TapStream& stream, uint32_t length, const tap::TapRecord& header, int32_t res);
  void dropped(TapStream& stream, tap::Direction direction, uint32_t length);
  int fd() const { return fd_; }

  void end(TapStream& stream, tap::Direction direction, tap::EndKind kind, int32_t error);
  void close(TapStream& stream, tap::CloseReason reason, int32_t error);
  // The worker is stopping and every write has completed: the file-end record.
  void finish();

  uint32_t writesInFlight() const { return inflight_; }
  const std::string& path() const { return path_; }

private:
  enum class Stage : uint8_t { Record, Payload, Header, Combined, Staged };
  struct Write {
    explicit Write(TapWriter& w) : writer(w), done(*this) {}
    void onDone(int32_t res, uint32_t flags) noexcept;
    TapWriter& writer;
    Stage stage = Stage::Record;
    TapStream* stream = nullptr;
    relay::ChunkRef chunk;
    tap::TapRecord record;         // Record: its bytes; Payload: the header to write after it
    uint8_t* stageData = nullptr;  // Staged: the stage buffer being written
    uint32_t payload = 0;          // Combined, Staged: payload bytes in the write
    struct iovec iov[2];           // Combined: header, payload
    uint64_t offset = 0;
    uint32_t length = 0;
    uint32_t written = 0;
    relay::BoundCompletion<Write, &Write::onDone> done;
    Write* nextFree = nullptr;
  };

  Write* acquire();
  void release(Write* w);
  void writeRecord(const tap::TapRecord& record);
  void submit(Write& w);
  void completed(Write& w, int32_t res);
  void payloadDone(Write& w, bool ok);
  void gap(TapStream& stream, tap::Direction direction, uint64_t bytes, tap::GapReason reason);
  void stageChunk(TapStream& stream, tap::Direction direction, const tap::TapReservation& r,
                  const tap::TapRecord& header, const relay::ChunkRef& chunk);
  void flushStage(TapStage& stage);
  void flushStages(TapStream& stream);
  void unlinkDirty(TapStage& stage);
  void combinedDone(Write& w, bool ok);
  void fail(int32_t error);
  void noteFull();

  relay::Ring& ring_;
  int fd_;
  std::string path_;
  const config::TapConfig& config_;
  std::string listener_;
  metrics::ListenerStats& stats_;
  tap::TapLayout layout_;
  std::vector<std::unique_ptr<Write>> writes_;
  Write* free_ = nullptr;
  std::vector<std::unique_ptr<uint8_t[]>> stageBuffers_;
  std::vector<uint8_t*> freeStages_;
  TapStage* dirtyHead_ = nullptr;  // staged, oldest first
  TapStage* dirtyTail_ = nullptr;
  uint32_t inflight_ = 0;
  uint64_t dropped_ = 0;
  bool failed_ = false;
  bool fullLogged_ = false;
};

}  // namespace grelay::proxy
