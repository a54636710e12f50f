#include "proxy/sockets.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "relay/tls_channel.h"

namespace grelay::proxy {

int SystemSockets::openStream(int family) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -errno;
  }
  setNoDelay(fd);
  return fd;
}

int bindSourceAddress(int fd, const config::Address& source) {
  const int on = 1;
  ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof(on));  // (best effort)
  return ::bind(fd, source.sockaddrPtr(), source.length) == 0 ? 0 : -errno;
}

void SystemSockets::shutdownWrite(int fd) {
  ::shutdown(fd, SHUT_WR);
}

void SystemSockets::close(int fd, bool reset) {
  if (reset) {
    linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }
  ::close(fd);
}

bool SystemSockets::addresses(int fd, sockaddr_storage* peer, sockaddr_storage* local) {
  socklen_t len = sizeof(*peer);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(peer), &len) != 0) {
    return false;
  }
  len = sizeof(*local);
  return ::getsockname(fd, reinterpret_cast<sockaddr*>(local), &len) == 0;
}

void SystemSockets::setNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void SystemSockets::setKeepAlive(int fd, uint32_t idleSeconds) {
  int on = 1;
  int idle = static_cast<int>(idleSeconds);
  int interval = std::max(1, idle / 3);
  int count = 3;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

int SystemSockets::acceptNow(int listenFd) {
  int fd = ::accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return fd >= 0 ? fd : -errno;
}

int SystemSockets::readTlsRecord(int fd, uint8_t* type, uint8_t* body, size_t length) {
  return relay::readKtlsRecord(fd, type, body, length);
}

ssize_t SystemSockets::sendNow(int fd, const void* data, size_t length) {
  ssize_t n = ::send(fd, data, length, MSG_DONTWAIT | MSG_NOSIGNAL);
  return n >= 0 ? n : -errno;
}

ssize_t SystemSockets::receiveNow(int fd, void* data, size_t length, bool peek) {
  ssize_t n = ::recv(fd, data, length, MSG_DONTWAIT | (peek ? MSG_PEEK : 0));
  return n >= 0 ? n : -errno;
}

void SystemSockets::setReceiveLowWater(int fd, int bytes) {
  ::setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof(bytes));
}

int SystemSockets::openPipe(int fds[2], uint32_t size) {
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return -errno;
  }
  // Best effort: past fs.pipe-max-size or the per-user pipe limits the pipe keeps its
  // default size (or less), which splice copes with.
  int held = ::fcntl(fds[0], F_SETPIPE_SZ, static_cast<int>(size));
  if (held < 0) {
    held = ::fcntl(fds[0], F_GETPIPE_SZ);
  }
  if (held <= 0) {
    int err = held < 0 ? -errno : -EINVAL;
    ::close(fds[0]);
    ::close(fds[1]);
    return err;
  }
  return held;
}

ssize_t SystemSockets::splice(int in, int out, size_t len) {
  // No SPLICE_F_MORE: it would cork the tail of a response until more bytes came.
  ssize_t n = ::splice(in, nullptr, out, nullptr, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  return n >= 0 ? n : -errno;
}

int addressFree(const config::Address& address) {
  // SO_REUSEPORT would let us join another process's listening socket and silently share
  // its traffic. A probe with SO_REUSEADDR only binds despite TIME_WAIT leftovers but not
  // despite a live listener, so it tells whether someone else has the address.
  int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -errno;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  int err = ::bind(fd, address.sockaddrPtr(), address.length) == 0 ? 0 : -errno;
  ::close(fd);
  return err;
}

int openListener(const config::Address& address, int backlog) {
  int fd = ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -errno;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (address.family() == AF_INET6) {
    // "[::]:80" means IPv6 only; list 0.0.0.0 separately for IPv4.
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }
  if (::bind(fd, address.sockaddrPtr(), address.length) != 0 || ::listen(fd, backlog) != 0) {
    int err = -errno;
    ::close(fd);
    return err;
  }
  return fd;
}

std::string formatAddress(const sockaddr_storage& address) {
  return config::formatEndpoint(address);
}

}  // namespace grelay::proxy
