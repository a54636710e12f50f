// Buffer leases. A Chunk is one received piece of a stream; every consumer (the send to
// the primary, each mirror send, the tap write) holds a ChunkRef, and the buffer goes
// back to where it came from when the last ChunkRef is gone. Single-threaded by design:
// chunks never leave their worker.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "relay/ring.h"

namespace grelay::relay {

class ChunkSource;

struct Chunk {
  uint8_t* data = nullptr;
  uint32_t length = 0;
  uint32_t capacity = 0;
  uint32_t refs = 0;
  uint16_t id = 0;
  ChunkSource* source = nullptr;
};

class ChunkSource {
public:
  virtual void release(Chunk& chunk) noexcept = 0;

protected:
  ~ChunkSource() = default;
};

// RAII lease on a Chunk.
class ChunkRef {
public:
  ChunkRef() = default;
  explicit ChunkRef(Chunk* chunk) : chunk_(chunk) {
    if (chunk_ != nullptr) {
      ++chunk_->refs;
    }
  }
  ChunkRef(const ChunkRef& other) : ChunkRef(other.chunk_) {}
  ChunkRef(ChunkRef&& other) noexcept : chunk_(std::exchange(other.chunk_, nullptr)) {}
  ChunkRef& operator=(ChunkRef other) noexcept {
    std::swap(chunk_, other.chunk_);
    return *this;
  }
  ~ChunkRef() { reset(); }

  void reset() noexcept {
    if (chunk_ != nullptr && --chunk_->refs == 0) {
      chunk_->source->release(*chunk_);
    }
    chunk_ = nullptr;
  }

  explicit operator bool() const { return chunk_ != nullptr; }
  const uint8_t* data() const { return chunk_->data; }
  uint8_t* mutableData() { return chunk_->data; }
  uint32_t size() const { return chunk_->length; }
  Chunk* get() const { return chunk_; }

private:
  Chunk* chunk_ = nullptr;
};

// Told (from the buffer's owner thread) when a pool gets buffers back, so starved
// receivers can be resumed; the callee must not touch sessions from inside the call.
class BufferListener {
public:
  virtual void onBuffersAvailable() noexcept = 0;

protected:
  ~BufferListener() = default;
};

// Receive buffers of the mainline path: a kernel provided-buffer ring. A buffer the
// kernel filled becomes a Chunk; when its last lease is released it is handed back to
// the kernel and, if receivers were starved (-ENOBUFS), the listener is told.
class ProvidedBufferPool final : public ChunkSource {
public:
  using Listener = BufferListener;

  explicit ProvidedBufferPool(std::unique_ptr<ProvidedBuffers> buffers);

  // Wraps buffer `id` that the kernel filled with `length` bytes.
  ChunkRef take(uint16_t id, uint32_t length);
  void release(Chunk& chunk) noexcept override;

  void setListener(Listener* listener) { listener_ = listener; }
  uint16_t groupId() const { return buffers_->groupId(); }
  uint32_t bufferSize() const { return buffers_->bufferSize(); }
  uint32_t count() const { return buffers_->count(); }
  uint32_t leased() const { return leased_; }
  uint32_t available() const { return count() - leased_; }

private:
  std::unique_ptr<ProvidedBuffers> buffers_;
  std::vector<Chunk> chunks_;
  uint32_t leased_ = 0;
  Listener* listener_ = nullptr;
};

// Userspace buffers for the copy path (bytes produced by OpenSSL): a free list of
// fixed-size buffers with a hard cap, so the copy path is bounded like the others.
class UserBufferPool final : public ChunkSource {
public:
  UserBufferPool(uint32_t bufferSize, uint32_t maxBuffers);
  ~UserBufferPool();
  UserBufferPool(const UserBufferPool&) = delete;
  UserBufferPool& operator=(const UserBufferPool&) = delete;

  // An empty chunk (length 0) to fill; an empty ChunkRef when the cap is reached (or
  // malloc fails). `overdraft`: past the cap too — for output whose room the caller
  // checked beforehand with available() (estimates of TLS record overhead can be short).
  ChunkRef allocate(bool overdraft = false);
  void release(Chunk& chunk) noexcept override;

  void setListener(BufferListener* listener) { listener_ = listener; }
  uint32_t bufferSize() const { return bufferSize_; }
  uint32_t leased() const { return leased_; }
  uint32_t maxBuffers() const { return maxBuffers_; }
  uint32_t available() const { return leased_ < maxBuffers_ ? maxBuffers_ - leased_ : 0; }

private:
  uint32_t bufferSize_;
  uint32_t maxBuffers_;
  uint32_t leased_ = 0;
  BufferListener* listener_ = nullptr;
  std::vector<Chunk*> free_;
  std::vector<std::unique_ptr<Chunk>> all_;
};

}  // namespace grelay::relay
