// A scripted Ring for unit tests: records every request; the test decides when and how
// each completes (results, flags, -EAGAIN, -ENOBUFS, short sends, multishot ends...).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "relay/ring.h"
#include "relay/uring_compat.h"

namespace grelay::testing {

enum class OpKind {
  Accept,
  RecvMultishot,
  RecvSelect,
  Recv,
  Send,
  Write,
  Read,
  Connect,
  Poll,
  Cancel,
  CancelFd,
  Group
};

struct FakeOp {
  OpKind kind;
  int fd = -1;
  const void* buf = nullptr;
  uint32_t len = 0;
  int msgFlags = 0;
  uint64_t offset = 0;
  uint16_t group = 0;
  const relay::Completion* target = nullptr;  // Cancel
  relay::Completion* completion = nullptr;
  std::vector<relay::GroupMember> members{};  // Group
  std::vector<struct iovec> iov{};            // Write from writev
  bool done = false;
  bool cancelRequested = false;
};

class FakeProvidedBuffers final : public relay::ProvidedBuffers {
public:
  FakeProvidedBuffers(uint16_t group, uint32_t count, uint32_t size)
      : group_(group), count_(count), size_(size), memory_(size_t{count} * size) {
    for (uint32_t i = 0; i < count; ++i) {
      free_.push_back(static_cast<uint16_t>(i));
    }
  }
  uint16_t groupId() const override { return group_; }
  uint32_t bufferSize() const override { return size_; }
  uint32_t count() const override { return count_; }
  uint8_t* address(uint16_t id) override { return memory_.data() + size_t{id} * size_; }
  void recycle(uint16_t id) override {
    free_.push_back(id);
    ++recycled_;
  }
  // What the kernel does on receive: pick a free buffer (-1 if none).
  int pick() {
    if (free_.empty()) {
      return -1;
    }
    int id = free_.front();
    free_.pop_front();
    return id;
  }
  size_t freeCount() const { return free_.size(); }
  uint64_t recycled() const { return recycled_; }

private:
  uint16_t group_;
  uint32_t count_;
  uint32_t size_;
  std::vector<uint8_t> memory_;
  std::deque<uint16_t> free_;
  uint64_t recycled_ = 0;
};

class FakeRing final : public relay::Ring {
public:
  void acceptMultishot(int fd, relay::Completion* c) override { add({OpKind::Accept, fd}, c); }
  void accept(int fd, relay::Completion* c) override { add({OpKind::Accept, fd}, c); }
  void recvMultishot(int fd, uint16_t group, relay::Completion* c) override {
    FakeOp op{OpKind::RecvMultishot, fd};
    op.group = group;
    add(op, c);
  }
  void recvSelect(int fd, uint16_t group, uint32_t len, relay::Completion* c) override {
    FakeOp op{OpKind::RecvSelect, fd};
    op.group = group;
    op.len = len;
    add(op, c);
  }
  void recv(int fd, void* buf, uint32_t len, relay::Completion* c) override {
    FakeOp op{OpKind::Recv, fd, buf, len};
    add(op, c);
  }
  void send(int fd, const void* buf, uint32_t len, int flags, relay::Completion* c) override {
    FakeOp op{OpKind::Send, fd, buf, len, flags};
    add(op, c);
  }
  void write(int fd, const void* buf, uint32_t len, uint64_t off, relay::Completion* c) override {
    FakeOp op{OpKind::Write, fd, buf, len, 0, off};
    add(op, c);
  }
  void writev(int fd, const struct iovec* iov, uint32_t count, uint64_t off,
              relay::Completion* c) override {
    FakeOp op{OpKind::Write, fd};
    op.offset = off;
    for (uint32_t i = 0; i < count; ++i) {
      op.iov.push_back(iov[i]);
      op.len += static_cast<uint32_t>(iov[i].iov_len);
    }
    add(op, c);
  }
  void read(int fd, void* buf, uint32_t len, relay::Completion* c) override {
    FakeOp op{OpKind::Read, fd, buf, len};
    add(op, c);
  }
  // A connect's `offset` is the destination port (host order), to tell servers apart.
  void connect(int fd, const sockaddr* addr, socklen_t, relay::Completion* c) override {
    FakeOp op{OpKind::Connect, fd};
    op.offset = ntohs(reinterpret_cast<const sockaddr_in*>(addr)->sin_port);
    add(op, c);
  }
  void pollAdd(int fd, uint32_t events, relay::Completion* c) override {
    FakeOp op{OpKind::Poll, fd};
    op.len = events;
    add(op, c);
  }
  void cancel(const relay::Completion* target, relay::Completion* c) override {
    FakeOp op{OpKind::Cancel};
    op.target = target;
    add(op, c);
    for (auto& o : ops_) {
      if (!o->done && o->completion == target) {
        o->cancelRequested = true;
      }
    }
  }
  void cancelFd(int fd, relay::Completion* c) override { add({OpKind::CancelFd, fd}, c); }
  void recvGroup(int fd, uint32_t maxLen, relay::Completion* leader,
                 std::span<const relay::GroupMember> members) override {
    FakeOp op{OpKind::Group, fd};
    op.len = maxLen;
    op.members.assign(members.begin(), members.end());
    add(op, leader);
  }
  int submit() override { return 0; }
  int run(const __kernel_timespec*) override {
    int n = 0;
    while (!posted_.empty()) {
      auto [c, res, flags] = posted_.front();
      posted_.pop_front();
      c->complete(res, flags);
      ++n;
    }
    return n;
  }
  std::unique_ptr<relay::ProvidedBuffers> registerBuffers(uint16_t group, uint32_t count,
                                                          uint32_t size, int* err) override {
    *err = 0;
    auto b = std::make_unique<FakeProvidedBuffers>(group, count, size);
    buffers_ = b.get();
    return b;
  }

  // --- scripting ---------------------------------------------------------------------
  // The oldest pending op of `kind` on `fd` (-1 = any fd), or nullptr.
  FakeOp* pending(OpKind kind, int fd = -1) {
    for (auto& o : ops_) {
      if (!o->done && o->kind == kind && (fd < 0 || o->fd == fd)) {
        return o.get();
      }
    }
    return nullptr;
  }
  // The oldest pending poll on `fd` for exactly `events`, or nullptr.
  FakeOp* pendingPoll(int fd, uint32_t events) {
    for (auto& o : ops_) {
      if (!o->done && o->kind == OpKind::Poll && o->fd == fd && o->len == events) {
        return o.get();
      }
    }
    return nullptr;
  }
  size_t pendingCount(OpKind kind, int fd = -1) const {
    size_t n = 0;
    for (auto& o : ops_) {
      n += (!o->done && o->kind == kind && (fd < 0 || o->fd == fd)) ? 1 : 0;
    }
    return n;
  }
  // Completes `op` (single-shot: it is done; pass more=true to keep a multishot armed).
  void complete(FakeOp* op, int32_t res, uint32_t flags = 0) {
    if (!(flags & IORING_CQE_F_MORE)) {
      op->done = true;
    }
    if (op->completion != nullptr) {
      op->completion->complete(res, flags);
    }
  }
  // A receive selecting a provided buffer (RecvSelect or RecvMultishot) gets `data`: the
  // fake kernel picks a buffer. `more`: a multishot receive stays armed (F_MORE).
  void receive(FakeOp* op, const std::string& data, bool more = false) {
    int id = buffers_->pick();
    if (id < 0) {
      complete(op, -ENOBUFS);
      return;
    }
    std::memcpy(buffers_->address(static_cast<uint16_t>(id)), data.data(), data.size());
    uint32_t flags = IORING_CQE_F_BUFFER | (static_cast<uint32_t>(id) << IORING_CQE_BUFFER_SHIFT);
    if (more && op->kind == OpKind::RecvMultishot) {
      flags |= IORING_CQE_F_MORE;
    }
    complete(op, static_cast<int32_t>(data.size()), flags);
  }
  // The pending receive on `fd` that selects provided buffers, whichever kind it is.
  FakeOp* pendingReceive(int fd) {
    FakeOp* op = pending(OpKind::RecvMultishot, fd);
    return op != nullptr ? op : pending(OpKind::RecvSelect, fd);
  }
  size_t pendingReceives(int fd) const {
    return pendingCount(OpKind::RecvMultishot, fd) + pendingCount(OpKind::RecvSelect, fd);
  }
  // Completes every op a cancel was requested for with -ECANCELED (a cancelled group
  // leader takes its unissued members with it, as the kernel does).
  size_t completeCancelled() {
    size_t n = 0;
    for (size_t i = 0; i < ops_.size(); ++i) {
      FakeOp* o = ops_[i].get();
      if (!o->done && o->cancelRequested) {
        complete(o, -ECANCELED);
        if (o->kind == OpKind::Group) {
          for (auto& m : o->members) {
            m.completion->complete(-ECANCELED, 0);
          }
        }
        ++n;
      }
    }
    return n;
  }
  // Queues a completion for the next run().
  void post(relay::Completion* c, int32_t res, uint32_t flags) {
    posted_.push_back({c, res, flags});
  }

  FakeProvidedBuffers* buffers() { return buffers_; }
  const std::vector<std::unique_ptr<FakeOp>>& ops() const { return ops_; }

private:
  void add(FakeOp op, relay::Completion* c) {
    op.completion = c;
    if (op.kind == OpKind::Cancel || op.kind == OpKind::CancelFd) {
      op.done = true;  // the cancel request itself completes at once; its CQE is ignored
    }
    ops_.push_back(std::make_unique<FakeOp>(std::move(op)));
  }

  struct Posted {
    relay::Completion* c;
    int32_t res;
    uint32_t flags;
  };
  std::vector<std::unique_ptr<FakeOp>> ops_;
  std::deque<Posted> posted_;
  FakeProvidedBuffers* buffers_ = nullptr;
};

}  // namespace grelay::testing
