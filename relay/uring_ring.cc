#include "relay/uring_ring.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "relay/uring_compat.h"

namespace grelay::relay {
namespace {

uint64_t tag(const Completion* c) {
  return reinterpret_cast<uint64_t>(c);
}

class UringProvidedBuffers final : public ProvidedBuffers {
public:
  UringProvidedBuffers(io_uring* ring, uint16_t group, uint32_t count, uint32_t size)
      : ring_(ring),
        group_(group),
        count_(count),
        size_(size),
        mask_(io_uring_buf_ring_mask(count)) {}

  ~UringProvidedBuffers() override {
    if (registered_) {
      io_uring_unregister_buf_ring(ring_, group_);
    }
    if (br_ != nullptr) {
      munmap(br_, ringBytes());
    }
    std::free(memory_);
  }

  int init() {
    void* mapped =
        mmap(nullptr, ringBytes(), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mapped == MAP_FAILED) {
      return -errno;
    }
    br_ = static_cast<io_uring_buf_ring*>(mapped);
    if (posix_memalign(reinterpret_cast<void**>(&memory_), 4096, size_t{count_} * size_) != 0) {
      return -ENOMEM;
    }
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(br_);
    reg.ring_entries = count_;
    reg.bgid = group_;
    int ret = io_uring_register_buf_ring(ring_, &reg, 0);
    if (ret < 0) {
      return ret;
    }
    registered_ = true;
    io_uring_buf_ring_init(br_);
    for (uint32_t i = 0; i < count_; ++i) {
      io_uring_buf_ring_add(br_, address(static_cast<uint16_t>(i)), size_, static_cast<uint16_t>(i),
                            mask_, static_cast<int>(i));
    }
    io_uring_buf_ring_advance(br_, static_cast<int>(count_));
    return 0;
  }

  uint16_t groupId() const override { return group_; }
  uint32_t bufferSize() const override { return size_; }
  uint32_t count() const override { return count_; }
  uint8_t* address(uint16_t id) override { return memory_ + size_t{id} * size_; }
  void recycle(uint16_t id) override {
    io_uring_buf_ring_add(br_, address(id), size_, id, mask_, 0);
    io_uring_buf_ring_advance(br_, 1);
  }

private:
  size_t ringBytes() const { return size_t{count_} * sizeof(io_uring_buf); }

  io_uring* ring_;
  uint16_t group_;
  uint32_t count_;
  uint32_t size_;
  int mask_;
  io_uring_buf_ring* br_ = nullptr;
  uint8_t* memory_ = nullptr;
  bool registered_ = false;
};

}  // namespace

std::unique_ptr<UringRing> UringRing::create(const RingOptions& options, int* err) {
  std::unique_ptr<UringRing> ring(new UringRing());
  // Best first; older kernels reject unknown setup flags with -EINVAL.
  const unsigned attempts[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      0,
  };
  int ret = -EINVAL;
  for (unsigned flags : attempts) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_CQSIZE;
    params.cq_entries = options.cqEntries;
    ret = io_uring_queue_init_params(options.sqEntries, &ring->ring_, &params);
    if (ret != -EINVAL) {
      break;
    }
  }
  if (ret < 0) {
    *err = ret;
    return nullptr;
  }
  *err = 0;
  return ring;
}

UringRing::~UringRing() {
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* UringRing::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (s == nullptr) {
    // The submission queue is full: hand what is queued to the kernel and retry.
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void UringRing::acceptMultishot(int listenFd, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_multishot_accept(s, listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::accept(int listenFd, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_accept(s, listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::recvMultishot(int fd, uint16_t group, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = group;
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::recvSelect(int fd, uint16_t group, uint32_t len, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv(s, fd, nullptr, len, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = group;
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::recv(int fd, void* buf, uint32_t len, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv(s, fd, buf, len, 0);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::send(int fd, const void* buf, uint32_t len, int msgFlags, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, fd, buf, len, msgFlags);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::write(int fd, const void* buf, uint32_t len, uint64_t offset, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_write(s, fd, buf, len, offset);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::writev(int fd, const struct iovec* iov, uint32_t count, uint64_t offset,
                       Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_writev(s, fd, iov, count, offset);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::read(int fd, void* buf, uint32_t len, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_read(s, fd, buf, len, 0);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::connect(int fd, const sockaddr* addr, socklen_t addrLen, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_connect(s, fd, addr, addrLen);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::pollAdd(int fd, uint32_t events, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_poll_add(s, fd, events);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::cancel(const Completion* target, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_cancel64(s, tag(target), 0);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::cancelFd(int fd, Completion* c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(s, tag(c));
}

void UringRing::recvGroup(int fd, uint32_t maxLen, Completion* leader,
                          std::span<const GroupMember> members) {
  // The whole group must land in one submission batch: make room first.
  if (io_uring_sq_space_left(&ring_) < members.size() + 1) {
    io_uring_submit(&ring_);
  }
  io_uring_sqe* s = sqe();
  io_uring_prep_recv(s, fd, nullptr, maxLen, 0);
  s->ioprio |= IORING_RECV_GROUP_KBUF;
  s->flags |= IOSQE_GROUP;
  io_uring_sqe_set_data64(s, tag(leader));
  for (size_t i = 0; i < members.size(); ++i) {
    const GroupMember& m = members[i];
    s = sqe();
    if (m.kind == GroupMember::Kind::Send) {
      io_uring_prep_send(s, m.fd, nullptr, m.length, m.msgFlags);
    } else {
      io_uring_prep_write(s, m.fd, nullptr, m.length, m.fileOffset);
    }
    s->addr = m.offset;
    s->flags |= IOSQE_GROUP_KBUF;
    if (i + 1 < members.size()) {
      s->flags |= IOSQE_GROUP;
    }
    io_uring_sqe_set_data64(s, tag(m.completion));
  }
}

int UringRing::submit() {
  return io_uring_submit(&ring_);
}

int UringRing::run(const __kernel_timespec* timeout) {
  io_uring_cqe* cqe = nullptr;
  int ret = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1,
                                             const_cast<__kernel_timespec*>(timeout), nullptr);
  if (ret < 0 && ret != -ETIME && ret != -EINTR) {
    return ret;
  }
  // Copy a batch out and release the CQ slots before dispatching, so handlers (which
  // queue new requests) always run against a consistent ring.
  int delivered = 0;
  while (true) {
    io_uring_cqe* batch[256];
    unsigned n = io_uring_peek_batch_cqe(&ring_, batch, 256);
    if (n == 0) {
      break;
    }
    struct Event {
      Completion* c;
      int32_t res;
      uint32_t flags;
    } events[256];
    for (unsigned i = 0; i < n; ++i) {
      events[i] = {reinterpret_cast<Completion*>(batch[i]->user_data), batch[i]->res,
                   batch[i]->flags};
    }
    io_uring_cq_advance(&ring_, n);
    for (unsigned i = 0; i < n; ++i) {
      if (events[i].c != nullptr) {
        events[i].c->complete(events[i].res, events[i].flags);
        ++delivered;
      }
    }
  }
  return delivered;
}

std::unique_ptr<ProvidedBuffers> UringRing::registerBuffers(uint16_t group, uint32_t count,
                                                            uint32_t bufferSize, int* err) {
  auto buffers = std::make_unique<UringProvidedBuffers>(&ring_, group, count, bufferSize);
  *err = buffers->init();
  if (*err < 0) {
    return nullptr;
  }
  return buffers;
}

}  // namespace grelay::relay
