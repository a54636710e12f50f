// Socket addresses for unit tests: sockaddr_storage from "IP" and a port.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>

namespace grelay::testing {

inline sockaddr_storage v4(const char* ip, uint16_t port) {
  sockaddr_storage out{};
  auto& a = reinterpret_cast<sockaddr_in&>(out);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return out;
}

inline sockaddr_storage v6(const char* ip, uint16_t port) {
  sockaddr_storage out{};
  auto& a = reinterpret_cast<sockaddr_in6&>(out);
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  inet_pton(AF_INET6, ip, &a.sin6_addr);
  return out;
}

}  // namespace grelay::testing
