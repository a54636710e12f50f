#include "relay/probe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

#include "relay/uring_compat.h"
#include "relay/uring_ring.h"

namespace grelay::relay {
namespace {

class Fd {
public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset(int fd) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = fd;
  }

private:
  int fd_;
};

std::string readSysctl(const char* path) {
  std::ifstream in(path);
  std::string value;
  if (in) {
    std::getline(in, value);
  }
  return value;
}

// A connected loopback TCP pair plus the listener, for probes that need sockets.
struct LoopbackPair {
  Fd listener, client, server;
  bool ok = false;
  LoopbackPair()
      : listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)),
        client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (listener.get() < 0 || client.get() < 0 ||
        bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        listen(listener.get(), 4) != 0 ||
        getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        connect(client.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
      return;
    }
    server.reset(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ok = server.get() >= 0;
  }
};

bool probeKtls() {
  LoopbackPair pair;
  if (!pair.ok) {
    return false;
  }
  // Attaching the ULP loads the module on demand where it exists; ENOENT = no kTLS.
  return setsockopt(pair.client.get(), SOL_TCP, TCP_ULP, "tls", 3) == 0;
}

// splice(2) from a TCP socket into a pipe and on to a socket, non-blocking: what the
// mainline path does for directions with nothing to fan out. A seccomp profile may
// refuse it.
bool probeSplice() {
  LoopbackPair pair;
  int pipeFds[2];
  if (!pair.ok || pipe2(pipeFds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return false;
  }
  Fd in(pipeFds[0]), out(pipeFds[1]);
  const char byte = 'x';
  if (::send(pair.client.get(), &byte, 1, MSG_NOSIGNAL) != 1) {
    return false;
  }
  return splice(pair.server.get(), nullptr, out.get(), nullptr, 1,
                SPLICE_F_NONBLOCK | SPLICE_F_MOVE) == 1 &&
         splice(in.get(), nullptr, pair.server.get(), nullptr, 1,
                SPLICE_F_NONBLOCK | SPLICE_F_MOVE) == 1;
}

// Submits one request and waits for its first CQE; returns its result.
class ProbeCompletion final : public Completion {
public:
  void complete(int32_t res, uint32_t flags) noexcept override {
    done = true;
    result = res;
    cqeFlags = flags;
  }
  bool done = false;
  int32_t result = 0;
  uint32_t cqeFlags = 0;
};

int32_t runOnce(UringRing& ring, ProbeCompletion& c) {
  __kernel_timespec ts{0, 200 * 1000 * 1000};
  for (int i = 0; i < 5 && !c.done; ++i) {
    ring.run(&ts);
  }
  return c.done ? c.result : -ETIME;
}

void cancelAndDrain(UringRing& ring, ProbeCompletion& c) {
  ProbeCompletion cancel;
  ring.cancel(&c, &cancel);
  __kernel_timespec ts{0, 100 * 1000 * 1000};
  for (int i = 0; i < 10 && (!cancel.done || (c.cqeFlags & IORING_CQE_F_MORE)); ++i) {
    c.done = false;
    ring.run(&ts);
    if (cancel.done && (!c.done || !(c.cqeFlags & IORING_CQE_F_MORE))) {
      break;
    }
  }
}

}  // namespace

std::string explainSetupError(int err) {
  if (err == -ENOSYS) {
    return "io_uring_setup() is not implemented by this kernel (ENOSYS): the kernel was built "
           "without CONFIG_IO_URING, or a seccomp filter answers ENOSYS. Run grelay on a kernel "
           "with io_uring (Linux >= 6.1) and allow io_uring_setup, io_uring_enter and "
           "io_uring_register in the container's seccomp profile (docker/seccomp-io_uring.json).";
  }
  if (err == -EPERM || err == -EACCES) {
    std::string disabled = readSysctl("/proc/sys/kernel/io_uring_disabled");
    if (disabled == "2") {
      return "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2). Enable it "
             "with: sysctl -w kernel.io_uring_disabled=0";
    }
    if (disabled == "1") {
      return "io_uring is restricted on this host (sysctl kernel.io_uring_disabled = 1): only "
             "root and members of the group in kernel.io_uring_group may use it. Run grelay in "
             "that group, or: sysctl -w kernel.io_uring_disabled=0";
    }
    return "io_uring_setup() was denied (EPERM): a seccomp profile blocks io_uring (Docker >= 25 "
           "and containerd 2 block it by default). Run the container with "
           "--security-opt seccomp=docker/seccomp-io_uring.json (allows io_uring_setup, "
           "io_uring_enter, io_uring_register).";
  }
  if (err == -ENOMEM) {
    return "io_uring_setup() failed with ENOMEM: the locked-memory limit (ulimit -l) or kernel "
           "memory is too small for the ring.";
  }
  return std::string("io_uring_setup() failed: ") + std::strerror(-err);
}

bool Features::pathAvailable(config::RelayPath path) const {
  return pathMissing(path).empty();
}

std::string Features::pathMissing(config::RelayPath path) const {
  if (!uringAvailable) {
    return "io_uring is unavailable";
  }
  switch (path) {
    case config::RelayPath::Auto:
      return "";
    case config::RelayPath::Group:
      if (!sqeGroups || !groupKernelBuffers) {
        return "the kernel lacks SQE groups with group kernel buffers (IORING_FEAT_SQE_GROUP, "
               "IORING_FEAT_GROUP_KBUF): boot the kernel built from kernel/ (kernel/README.md)";
      }
      return "";
    case config::RelayPath::Mainline:
    case config::RelayPath::Copy:
      if (!providedBufferRings) {
        return "the kernel lacks provided buffer rings (Linux >= 5.19 needed)";
      }
      return "";
  }
  return "";
}

config::RelayPath Features::autoPath() const {
  if (pathAvailable(config::RelayPath::Group)) {
    return config::RelayPath::Group;
  }
  return config::RelayPath::Mainline;
}

Features probeFeatures() {
  Features f;
  utsname u{};
  if (uname(&u) == 0) {
    f.kernelRelease = u.release;
  }
  int err = 0;
  auto ring = UringRing::create(RingOptions{64, 256}, &err);
  if (!ring) {
    f.setupError = err;
    f.unavailableWhy = explainSetupError(err);
    return f;
  }
  f.uringAvailable = true;
  f.featureBits = ring->features();
  f.bundles = (f.featureBits & IORING_FEAT_RECVSEND_BUNDLE) != 0;
  f.sqeGroups = (f.featureBits & IORING_FEAT_SQE_GROUP) != 0;
  f.groupKernelBuffers = (f.featureBits & IORING_FEAT_GROUP_KBUF) != 0;

  if (io_uring_probe* probe = io_uring_get_probe_ring(ring->raw())) {
    f.sendZc = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
    io_uring_free_probe(probe);
  }

  auto buffers = ring->registerBuffers(0, 8, 4096, &err);
  f.providedBufferRings = buffers != nullptr;

  LoopbackPair pair;
  if (pair.ok) {
    ProbeCompletion accept;
    ring->acceptMultishot(pair.listener.get(), &accept);
    __kernel_timespec ts{0, 50 * 1000 * 1000};
    ring->run(&ts);
    // Nothing is pending on the listener: a supported multishot accept stays armed.
    f.multishotAccept = !accept.done || accept.result != -EINVAL;
    if (!accept.done) {
      cancelAndDrain(*ring, accept);
    }
    if (buffers) {
      ProbeCompletion recv;
      ring->recvMultishot(pair.server.get(), buffers->groupId(), &recv);
      const char byte = 'x';
      if (::send(pair.client.get(), &byte, 1, MSG_NOSIGNAL) == 1) {
        int32_t res = runOnce(*ring, recv);
        f.multishotRecv = res == 1 && (recv.cqeFlags & IORING_CQE_F_MORE) != 0;
        if (recv.cqeFlags & IORING_CQE_F_MORE) {
          cancelAndDrain(*ring, recv);
        }
      }
    }
  }
  buffers.reset();
  ring.reset();
  f.ktls = probeKtls();
  f.splice = probeSplice();
  return f;
}

void printFeatures(const Features& f, std::ostream& out) {
  auto yesNo = [](bool b) { return b ? "yes" : "no"; };
  out << "kernel: " << f.kernelRelease << "\n";
  if (!f.uringAvailable) {
    out << "io_uring: unavailable: " << f.unavailableWhy << "\n";
    out << "relay path chosen by auto: none (grelay cannot run here)\n";
    return;
  }
  char bits[16];
  snprintf(bits, sizeof(bits), "0x%08x", f.featureBits);
  out << "io_uring: available (features " << bits << ")\n"
      << "  provided buffer rings:          " << yesNo(f.providedBufferRings) << "\n"
      << "  multishot accept:               " << yesNo(f.multishotAccept) << "\n"
      << "  multishot recv:                 " << yesNo(f.multishotRecv) << "\n"
      << "  send zero-copy (SEND_ZC):       " << yesNo(f.sendZc) << "\n"
      << "  recv/send bundles:              " << yesNo(f.bundles) << "\n"
      << "  SQE groups:                     " << yesNo(f.sqeGroups) << "\n"
      << "  group kernel buffers:           " << yesNo(f.groupKernelBuffers) << "\n"
      << "kTLS (tcp ULP \"tls\"):             " << yesNo(f.ktls) << "\n"
      << "splice (socket->pipe->socket):    " << yesNo(f.splice) << "\n"
      << "relay paths:\n";
  for (auto path :
       {config::RelayPath::Group, config::RelayPath::Mainline, config::RelayPath::Copy}) {
    std::string missing = f.pathMissing(path);
    out << "  " << config::toString(path) << ": "
        << (missing.empty() ? std::string("available") : "unavailable (" + missing + ")") << "\n";
  }
  out << "relay path chosen by auto: " << config::toString(f.autoPath()) << "\n";
}

}  // namespace grelay::relay
