#include "relay/buffer.h"

#include <cstdlib>

namespace grelay::relay {

ProvidedBufferPool::ProvidedBufferPool(std::unique_ptr<ProvidedBuffers> buffers)
    : buffers_(std::move(buffers)), chunks_(buffers_->count()) {
  for (uint32_t i = 0; i < chunks_.size(); ++i) {
    Chunk& c = chunks_[i];
    c.id = static_cast<uint16_t>(i);
    c.data = buffers_->address(c.id);
    c.capacity = buffers_->bufferSize();
    c.source = this;
  }
}

ChunkRef ProvidedBufferPool::take(uint16_t id, uint32_t length) {
  Chunk& c = chunks_[id];
  c.length = length;
  ++leased_;
  return ChunkRef(&c);
}

void ProvidedBufferPool::release(Chunk& chunk) noexcept {
  chunk.length = 0;
  buffers_->recycle(chunk.id);
  --leased_;
  if (listener_ != nullptr) {
    listener_->onBuffersAvailable();
  }
}

UserBufferPool::UserBufferPool(uint32_t bufferSize, uint32_t maxBuffers)
    : bufferSize_(bufferSize), maxBuffers_(maxBuffers) {}

UserBufferPool::~UserBufferPool() {
  for (auto& c : all_) {
    std::free(c->data);
  }
}

ChunkRef UserBufferPool::allocate(bool overdraft) {
  Chunk* c = nullptr;
  if (leased_ >= maxBuffers_ && !overdraft) {
    return ChunkRef();
  }
  if (!free_.empty()) {
    c = free_.back();
    free_.pop_back();
  } else {
    void* mem = std::malloc(bufferSize_);
    if (mem == nullptr) {
      return ChunkRef();
    }
    auto chunk = std::make_unique<Chunk>();
    chunk->data = static_cast<uint8_t*>(mem);
    chunk->capacity = bufferSize_;
    chunk->id = static_cast<uint16_t>(all_.size());
    chunk->source = this;
    c = chunk.get();
    all_.push_back(std::move(chunk));
  }
  c->length = 0;
  ++leased_;
  return ChunkRef(c);
}

void UserBufferPool::release(Chunk& chunk) noexcept {
  chunk.length = 0;
  --leased_;
  free_.push_back(&chunk);
  if (listener_ != nullptr) {
    listener_->onBuffersAvailable();
  }
}

}  // namespace grelay::relay
