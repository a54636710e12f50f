// The io_uring engine's seam: everything grelay asks of io_uring goes through Ring, so
// unit tests can script completions with a fake (tests/relay/fake_ring.h) and the real
// implementation (UringRing) stays small.
//
// Ownership: the caller owns every fd and every buffer passed in; buffers must stay valid
// until the op's completion has been delivered. Completions are delivered only from run().
#pragma once

#include <linux/time_types.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>

#include "relay/completion.h"

namespace grelay::relay {

// A kernel provided-buffer ring: `count` buffers of `bufferSize` bytes the kernel picks
// from for receives that select a buffer (mainline path).
class ProvidedBuffers {
public:
  virtual ~ProvidedBuffers() = default;
  virtual uint16_t groupId() const = 0;
  virtual uint32_t bufferSize() const = 0;
  virtual uint32_t count() const = 0;
  virtual uint8_t* address(uint16_t id) = 0;
  // Hands buffer `id` back to the kernel.
  virtual void recycle(uint16_t id) = 0;
};

// One member of an SQE group (group path). Its source is the group's kernel buffer:
// bytes [offset, offset + length) of what the leader received; length 0 = the rest.
struct GroupMember {
  enum class Kind : uint8_t { Send, Write };
  Kind kind = Kind::Send;
  int fd = -1;
  uint32_t offset = 0;
  uint32_t length = 0;
  int msgFlags = 0;         // Send
  uint64_t fileOffset = 0;  // Write
  Completion* completion = nullptr;
};

class Ring {
public:
  virtual ~Ring() = default;

  virtual void acceptMultishot(int listenFd, Completion* c) = 0;
  // One accept (a listener whose accepts are paced: max_connection_rate).
  virtual void accept(int listenFd, Completion* c) = 0;
  // Multishot receive selecting buffers from provided-buffer group `group`.
  virtual void recvMultishot(int fd, uint16_t group, Completion* c) = 0;
  // Single receive of up to `len` bytes into a buffer selected from `group`.
  virtual void recvSelect(int fd, uint16_t group, uint32_t len, Completion* c) = 0;
  // Single receive into caller memory.
  virtual void recv(int fd, void* buf, uint32_t len, Completion* c) = 0;
  virtual void send(int fd, const void* buf, uint32_t len, int msgFlags, Completion* c) = 0;
  virtual void write(int fd, const void* buf, uint32_t len, uint64_t offset, Completion* c) = 0;
  // Gathers `count` buffers into one positioned write (the iovecs must stay valid too).
  virtual void writev(int fd, const struct iovec* iov, uint32_t count, uint64_t offset,
                      Completion* c) = 0;
  virtual void read(int fd, void* buf, uint32_t len, Completion* c) = 0;
  virtual void connect(int fd, const sockaddr* addr, socklen_t addrLen, Completion* c) = 0;
  // One-shot readiness: completes with the ready events (POLLIN, POLLOUT...) or -errno.
  virtual void pollAdd(int fd, uint32_t events, Completion* c) = 0;
  // Cancels the request whose completion is `target` (its CQE then reports -ECANCELED).
  virtual void cancel(const Completion* target, Completion* c) = 0;
  // Cancels every request on `fd`.
  virtual void cancelFd(int fd, Completion* c) = 0;
  // Group path: a RECV leader into a group kernel buffer of up to `maxLen` bytes, then
  // `members`. Only valid when the kernel advertises IORING_FEAT_GROUP_KBUF.
  virtual void recvGroup(int fd, uint32_t maxLen, Completion* leader,
                         std::span<const GroupMember> members) = 0;

  // Submits queued requests; returns -errno on failure.
  virtual int submit() = 0;
  // Submits, waits for at least one completion (or until `timeout`, nullptr = no limit)
  // and delivers every completion available. Returns the number delivered or -errno
  // (-ETIME and -EINTR are normal).
  virtual int run(const __kernel_timespec* timeout) = 0;

  // Registers a provided-buffer ring; nullptr and *err = -errno on failure.
  virtual std::unique_ptr<ProvidedBuffers> registerBuffers(uint16_t group, uint32_t count,
                                                           uint32_t bufferSize, int* err) = 0;
};

using RingPtr = std::unique_ptr<Ring>;

}  // namespace grelay::relay
