// The real Ring: liburing on the running kernel.
#pragma once

#include <liburing.h>

#include "relay/ring.h"

namespace grelay::relay {

struct RingOptions {
  uint32_t sqEntries = 1024;
  uint32_t cqEntries = 8192;
};

class UringRing final : public Ring {
public:
  // Creates a ring owned by the calling thread (SINGLE_ISSUER/DEFER_TASKRUN where the
  // kernel has them). nullptr and *err = -errno when io_uring is unavailable.
  static std::unique_ptr<UringRing> create(const RingOptions& options, int* err);
  ~UringRing() override;

  void acceptMultishot(int listenFd, Completion* c) override;
  void accept(int listenFd, Completion* c) override;
  void recvMultishot(int fd, uint16_t group, Completion* c) override;
  void recvSelect(int fd, uint16_t group, uint32_t len, Completion* c) override;
  void recv(int fd, void* buf, uint32_t len, Completion* c) override;
  void send(int fd, const void* buf, uint32_t len, int msgFlags, Completion* c) override;
  void write(int fd, const void* buf, uint32_t len, uint64_t offset, Completion* c) override;
  void writev(int fd, const struct iovec* iov, uint32_t count, uint64_t offset,
              Completion* c) override;
  void read(int fd, void* buf, uint32_t len, Completion* c) override;
  void connect(int fd, const sockaddr* addr, socklen_t addrLen, Completion* c) override;
  void pollAdd(int fd, uint32_t events, Completion* c) override;
  void cancel(const Completion* target, Completion* c) override;
  void cancelFd(int fd, Completion* c) override;
  void recvGroup(int fd, uint32_t maxLen, Completion* leader,
                 std::span<const GroupMember> members) override;
  int submit() override;
  int run(const __kernel_timespec* timeout) override;
  std::unique_ptr<ProvidedBuffers> registerBuffers(uint16_t group, uint32_t count,
                                                   uint32_t bufferSize, int* err) override;

  uint32_t features() const { return ring_.features; }
  io_uring* raw() { return &ring_; }

private:
  UringRing() = default;
  io_uring_sqe* sqe();

  io_uring ring_{};
};

}  // namespace grelay::relay
