// The tap writer's layout engine: decides where every byte of a tap file goes and produces
// the bytes of the small metadata records. It performs no I/O: the engine writes payloads
// straight from its receive buffers and the records returned here, with positioned WRITEs in
// any order (FORMAT.md, "Writer protocol").
//
// One TapLayout per tap file; a file is written by one worker thread, so TapLayout is not
// thread-safe. Per-session state lives in a TapSession the caller embeds in its session object.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/tap/format.h"
#include "proxy/tap/tap_types.h"

namespace grelay::tap {

inline constexpr size_t kMaxRecordSize = 128;

// Bytes to write at `offset` with one WRITE. Inline storage: the caller keeps the value alive
// until that write completes.
struct TapRecord {
  uint64_t offset = 0;
  uint32_t size = 0;
  std::array<uint8_t, kMaxRecordSize> bytes{};

  const uint8_t* data() const { return bytes.data(); }
};

enum class TapStatus : uint8_t {
  kOk = 0,
  kFull,         // max_size reached: nothing laid out; the caller counts the bytes as dropped
  kBadState,     // not allowed now (session not open, direction ended, reservation pending...)
  kBadArgument,  // zero length, length above the reservation's capacity, wrong reservation
};
const char* toString(TapStatus status);

// How reserveChunk() may size a reservation.
enum class Fit : uint8_t {
  // The length may be capped to the space left in the stream's current extent (group path:
  // the receive is submitted with the capped length).
  kCapToExtent,
  // All of maxLength in one chunk (mainline/copy paths: the received length is known).
  kWhole,
};

struct TapLayoutOptions {
  uint64_t maxSize = 0;              // byte budget of the file; 0 = unlimited
  uint32_t firstExtentSize = 4096;   // first extent of a stream; doubles per extent...
  uint32_t maxExtentSize = 1 << 20;  // ...up to this (a kWhole chunk may need a larger one)
  // kCapToExtent: if the current extent has room for fewer payload bytes than
  // min(maxLength, minCappedPayload), a new extent is allocated instead of capping.
  uint32_t minCappedPayload = 2048;
};

// What the file header records about its writer.
struct TapFileIdentity {
  std::string listener;  // truncated to 64 bytes in the header
  uint32_t worker = 0;
  uint32_t pid = 0;
  uint64_t createdNs = 0;
  uint64_t salt = 0;  // random per file (tapRandomSalt()); tests may fix it
};

struct TapSessionInfo {
  uint64_t sessionId = 0;  // unique within the file
  uint64_t timeNs = 0;     // accept time, CLOCK_REALTIME
  uint32_t flags = 0;      // kSessionTlsTerminated ...
  TapAddress client;
  TapAddress local;     // where the client connected to (getsockname of the accepted socket)
  TapAddress upstream;  // unknown (family 0) if the connect failed or has not happened
};

// A reserved chunk slot. The payload goes to payloadOffset (at most `capacity` bytes); the
// chunk header (from commitChunk) to headerOffset. If hasExtentHeader, the reservation opened
// a new extent whose header must be written too (any time, independent of the payload).
struct TapReservation {
  uint64_t headerOffset = 0;
  uint64_t payloadOffset = 0;
  uint32_t capacity = 0;
  Direction direction = Direction::kRequest;
  bool hasExtentHeader = false;
  TapRecord extentHeader;
};

// Per-session writer state, owned by the engine's session object. Start with a fresh
// (default-constructed) one per session; it must outlive its last TapLayout call.
class TapSession {
public:
  bool isOpen() const { return state_ == State::kOpen; }
  uint64_t sessionId() const { return sessionId_; }
  // Bytes of the direction accounted so far: committed chunks + gaps.
  uint64_t streamBytes(Direction d) const { return streams_[index(d)].streamOffset; }
  bool hasPendingChunk(Direction d) const { return streams_[index(d)].pending; }
  bool ended(Direction d) const { return streams_[index(d)].ended; }

private:
  friend class TapLayout;
  enum class State : uint8_t { kIdle, kOpen, kClosed };
  struct Stream {
    uint64_t extentEnd = 0;     // end of the current extent (0 = none yet)
    uint64_t writePos = 0;      // where the next chunk header goes
    uint64_t streamOffset = 0;  // stream position of the next byte
    uint64_t pendingHeader = 0;
    uint32_t pendingCapacity = 0;
    uint32_t extentSequence = 0;  // sequence number of the next extent
    uint32_t nextExtentSize = 0;
    bool pending = false;
    bool ended = false;
  };
  State state_ = State::kIdle;
  uint64_t sessionId_ = 0;
  std::array<Stream, 2> streams_{};
};

class TapLayout {
public:
  TapLayout(const TapFileIdentity& identity, const TapLayoutOptions& options);

  // The file header: write it at offset 0 before or together with anything else.
  const TapRecord& fileHeader() const { return fileHeader_; }
  // End of the last laid-out block = the file's final size once every write is done.
  uint64_t fileSize() const { return used_; }
  // True once a reservation was refused for the byte budget: from then on only end, close
  // and finish records are laid out (their space is held back from the start).
  bool full() const { return full_; }
  bool finished() const { return finished_; }
  uint64_t openSessions() const { return openSessions_; }
  uint64_t sessionsOpened() const { return sessionsOpened_; }
  uint64_t salt() const { return salt_; }

  // Lays out the session's open record. kFull: the session is not recorded at all (the
  // TapSession stays unopened and every later call for it returns kBadState).
  TapStatus openSession(TapSession& session, const TapSessionInfo& info, TapRecord* record);

  // Reserves the next chunk of a stream. At most one reservation per stream is pending:
  // the next one is allowed after commitChunk() or abandonChunk().
  TapStatus reserveChunk(TapSession& session, Direction direction, uint32_t maxLength, Fit fit,
                         TapReservation* reservation);
  // The received length is known (0 < length <= capacity): returns the chunk header record.
  // Write it only after the payload WRITE succeeded in full; if the payload write fails, do
  // not write it (readers then see the extent's data end there). The stream may reserve its
  // next chunk right away, without waiting for either write.
  TapStatus commitChunk(TapSession& session, const TapReservation& reservation, uint32_t length,
                        uint64_t timeNs, TapRecord* header);
  // Nothing to record (the receive failed or returned 0): the slot is reused by the next
  // reservation, unless payloadRegionDirty (a payload write may have put bytes there), in
  // which case the stream moves on to a new extent.
  TapStatus abandonChunk(TapSession& session, const TapReservation& reservation,
                         bool payloadRegionDirty = false);

  // `bytes` of the stream were not recorded (max_lag, write error, file full). The stream
  // position advances even when the record itself is refused (kFull), so the end record and
  // later chunks stay at the right stream offsets. Not allowed while a chunk is pending.
  TapStatus recordGap(TapSession& session, Direction direction, uint64_t bytes, GapReason reason,
                      uint64_t timeNs, TapRecord* record);
  // The direction ended (FIN or reset). A pending reservation of that direction is dropped
  // (as dirty: a later commit for it returns kBadState). Always fits (space held back).
  TapStatus endDirection(TapSession& session, Direction direction, EndKind kind, int32_t error,
                         uint64_t timeNs, TapRecord* record);
  // The session closed; pending reservations are dropped. Always fits.
  TapStatus closeSession(TapSession& session, CloseReason reason, int32_t error, uint64_t timeNs,
                         TapRecord* record);
  // The last record of the file (clean stop); readers treat a file without it as
  // unfinished. droppedBytes: the caller's count of bytes it could not record.
  TapStatus finish(uint64_t droppedBytes, uint64_t timeNs, TapRecord* record);

private:
  static constexpr uint64_t kSessionHeadroom =
      2 * sizeof(DirectionEndRecord) + sizeof(SessionCloseRecord);

  uint64_t available() const;
  uint64_t allocate(uint64_t size);
  void dropPending(TapSession::Stream& stream);
  template <typename Record>
  void seal(Record& rec, BlockType type, uint64_t offset, uint32_t size, TapRecord* out) const;

  uint64_t salt_;
  TapLayoutOptions options_;
  TapRecord fileHeader_;
  uint64_t used_ = sizeof(FileHeader);
  uint64_t headroom_ = sizeof(FileEndRecord);
  uint64_t openSessions_ = 0;
  uint64_t sessionsOpened_ = 0;
  bool full_ = false;
  bool finished_ = false;
};

// "<listener>-w<worker>-<YYYYmmddTHHMMSSZ>-<pid>.gtap"; characters outside [A-Za-z0-9._-] in
// the listener name become '_'. With `sequence` > 0 "...-<pid>-<sequence>.gtap": a later file
// of the same worker, process and second (a reload right after another).
std::string tapFileName(std::string_view listener, uint32_t worker, uint64_t createdNs,
                        uint32_t pid, uint32_t sequence = 0);
// CLOCK_REALTIME in ns: the clock of every tap timestamp.
uint64_t tapNowNs();
// 64 random bits from getrandom().
uint64_t tapRandomSalt();

}  // namespace grelay::tap
