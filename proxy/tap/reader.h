// Reading tap files: parseTap() walks a whole file held in memory (or mmap'ed), validates
// every structure and returns the sessions with their chunks in stream order. It never reads
// outside [data, data + size) and accepts any input: damage is reported in TapDiagnostics and
// everything valid is still returned.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/tap/tap_types.h"

namespace grelay::tap {

struct TapChunk {
  uint64_t streamOffset = 0;   // position of its first byte in the stream
  uint64_t timeNs = 0;         // receive time
  uint64_t payloadOffset = 0;  // file offset of the payload
  uint32_t length = 0;
};

struct TapGap {
  uint64_t streamOffset = 0;
  uint64_t bytes = 0;
  uint64_t timeNs = 0;
  uint8_t reason = 0;  // GapReason
};

struct TapEnd {
  EndKind kind = EndKind::kFin;
  uint64_t timeNs = 0;
  uint64_t streamBytes = 0;  // total bytes of the direction per the writer
  int32_t error = 0;
};

struct TapClose {
  uint64_t timeNs = 0;
  uint32_t reason = 0;  // CloseReason (unknown values kept)
  int32_t error = 0;
};

struct TapStreamContents {
  std::vector<TapChunk> chunks;  // by streamOffset, non-overlapping
  std::vector<TapGap> gaps;      // recorded gaps, by streamOffset
  std::optional<TapEnd> end;

  uint64_t recordedBytes() const;
  // Where the stream ends: max of the last chunk, the last gap and end->streamBytes.
  uint64_t endOffset() const;
};

struct TapSessionContents {
  uint64_t sessionId = 0;
  bool hasOpen = false;  // false: chunks/records exist but the open record is missing
  uint64_t openTimeNs = 0;
  uint32_t flags = 0;
  TapAddress client;
  TapAddress local;
  TapAddress upstream;
  std::optional<TapClose> close;
  std::array<TapStreamContents, 2> streams;  // index(Direction)
  uint64_t recordOffset = 0;                 // file offset of its open (or first) record
};

struct TapFileInfo {
  uint16_t version = 0;
  uint64_t salt = 0;
  uint64_t createdNs = 0;
  uint64_t maxSize = 0;
  uint32_t pid = 0;
  uint32_t worker = 0;
  std::string listener;
  bool finished = false;  // the file-end record was found
  uint64_t endTimeNs = 0;
  uint64_t sessionsDeclared = 0;
  uint64_t droppedBytes = 0;
  bool full = false;  // the writer reached max_size
};

struct TapContents {
  TapFileInfo file;
  std::vector<TapSessionContents> sessions;  // by open time, then session id
};

struct TapDiagnostic {
  bool error = true;  // false: a note (nothing lost)
  uint64_t offset = 0;
  std::string message;
};

class TapDiagnostics {
public:
  static constexpr size_t kMaxItems = 1000;

  void error(uint64_t offset, std::string message);
  void note(uint64_t offset, std::string message);
  const std::vector<TapDiagnostic>& items() const { return items_; }
  size_t errors() const { return errors_; }
  size_t notes() const { return notes_; }
  // Items counted but not stored beyond kMaxItems.
  size_t suppressed() const { return suppressed_; }

private:
  void add(bool error, uint64_t offset, std::string message);
  std::vector<TapDiagnostic> items_;
  size_t errors_ = 0;
  size_t notes_ = 0;
  size_t suppressed_ = 0;
};

// Parses a tap file image. Returns false if the file header is unusable (nothing can be
// read); otherwise true with every valid session in *contents, even when *diagnostics holds
// errors (truncation, corruption, an unfinished file).
bool parseTap(const uint8_t* data, size_t size, TapContents* contents, TapDiagnostics* diagnostics);

// A read-only memory map of a file (RAII). Empty files map to data() == nullptr, size() 0.
class MappedFile {
public:
  static std::unique_ptr<MappedFile> open(const std::string& path, std::string* error);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  const uint8_t* data_;
  size_t size_;
};

}  // namespace grelay::tap
