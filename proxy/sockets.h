// The few synchronous socket calls sessions make (everything else goes through the
// ring), behind an interface so unit tests can run sessions on fake descriptors.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>

#include "config/config.h"

namespace grelay::proxy {

class Sockets {
public:
  virtual ~Sockets() = default;
  // A non-blocking, close-on-exec TCP socket with TCP_NODELAY; -errno on failure.
  virtual int openStream(int family) = 0;
  // Binds fd to `source` (source_address; its port, 0, is chosen at connect: see
  // bindSourceAddress()); 0 or -errno.
  virtual int bindSource(int fd, const config::Address& source) = 0;
  virtual void shutdownWrite(int fd) = 0;
  // Closes fd; with `reset`, the peer gets an RST instead of a FIN (SO_LINGER 0).
  virtual void close(int fd, bool reset) = 0;
  // The peer's and the local address of a connected socket (false on error).
  virtual bool addresses(int fd, sockaddr_storage* peer, sockaddr_storage* local) = 0;
  virtual void setNoDelay(int fd) = 0;
  // SO_KEEPALIVE with probes after `idleSeconds` idle, every idleSeconds / 3 (at least 1),
  // 3 unanswered probes ending the connection.
  virtual void setKeepAlive(int fd, uint32_t idleSeconds) = 0;
  // A non-blocking, close-on-exec pipe (fds[0] reads, fds[1] writes) asked to hold
  // `size` bytes; returns what it holds or -errno.
  virtual int openPipe(int fds[2], uint32_t size) = 0;
  // Non-blocking splice(2) of up to `len` bytes from `in` to `out` (one is a pipe). Bytes
  // moved, 0 at EOF of `in`, or -errno.
  virtual ssize_t splice(int in, int out, size_t len) = 0;
  // accept4(2) on a non-blocking listening socket: a non-blocking, close-on-exec connected
  // socket, or -errno (-EAGAIN: none is waiting).
  virtual int acceptNow(int listenFd) = 0;
  // Kernel TLS: the record at the head of the receive queue with its type (recvmsg with
  // TLS_GET_RECORD_TYPE, non-blocking); bytes read or -errno.
  virtual int readTlsRecord(int fd, uint8_t* type, uint8_t* body, size_t length) = 0;
  // Non-blocking send(2) without SIGPIPE: bytes sent or -errno.
  virtual ssize_t sendNow(int fd, const void* data, size_t length) = 0;
  // Non-blocking recv(2), with MSG_PEEK when `peek`: bytes read, 0 at EOF, or -errno.
  virtual ssize_t receiveNow(int fd, void* data, size_t length, bool peek) = 0;
  // SO_RCVLOWAT: a poll for POLLIN completes once `bytes` are waiting (or at EOF).
  virtual void setReceiveLowWater(int fd, int bytes) = 0;
};

// Binds a socket about to connect to `source` with IP_BIND_ADDRESS_NO_PORT, so the kernel
// picks the port at connect, per destination, rather than reserving one at bind for good
// (connects from one address to many servers would run out of ports otherwise); 0 or
// -errno. Shared with the health checker.
int bindSourceAddress(int fd, const config::Address& source);

class SystemSockets final : public Sockets {
public:
  int openStream(int family) override;
  int bindSource(int fd, const config::Address& source) override {
    return bindSourceAddress(fd, source);
  }
  void shutdownWrite(int fd) override;
  void close(int fd, bool reset) override;
  bool addresses(int fd, sockaddr_storage* peer, sockaddr_storage* local) override;
  void setNoDelay(int fd) override;
  void setKeepAlive(int fd, uint32_t idleSeconds) override;
  int openPipe(int fds[2], uint32_t size) override;
  ssize_t splice(int in, int out, size_t len) override;
  int acceptNow(int listenFd) override;
  int readTlsRecord(int fd, uint8_t* type, uint8_t* body, size_t length) override;
  ssize_t sendNow(int fd, const void* data, size_t length) override;
  ssize_t receiveNow(int fd, void* data, size_t length, bool peek) override;
  void setReceiveLowWater(int fd, int bytes) override;
};

// 0 if nobody (no other process, no other socket) is bound to `address`, else -errno
// (EADDRINUSE). Call before the first openListener() of an address.
int addressFree(const config::Address& address);

// Binds a listening socket with SO_REUSEPORT (one per worker); -errno on failure.
int openListener(const config::Address& address, int backlog);

std::string formatAddress(const sockaddr_storage& address);

}  // namespace grelay::proxy
