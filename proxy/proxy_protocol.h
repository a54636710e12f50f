// The PROXY protocol header (HAProxy's spec, versions 1 and 2) that tells an upstream
// server the client's address and the address the client connected to.
#pragma once

#include <sys/socket.h>

#include <string>

#include "config/config.h"

namespace grelay::proxy {

// The header for a TCP connection from `client` to `local` (the listener's address).
// Version 1 is one text line ("PROXY TCP4 SRC DST SPORT DPORT\r\n"); version 2 is binary
// (12-byte signature, command PROXY, TCP over IPv4 or IPv6, no TLVs). Addresses that are
// neither both IPv4 nor both IPv6 (a client whose address could not be read) give
// "PROXY UNKNOWN\r\n" and, in version 2, the UNSPEC family: the server then uses the
// connection's own addresses. Empty for ProxyProtocol::Off.
std::string proxyHeader(config::ProxyProtocol version, const sockaddr_storage& client,
                        const sockaddr_storage& local);

// The header for a connection grelay makes on its own behalf (a health check), which the
// spec says servers must accept without addresses: "PROXY UNKNOWN\r\n", or v2's LOCAL
// command. Empty for ProxyProtocol::Off.
std::string proxyHeaderLocal(config::ProxyProtocol version);

}  // namespace grelay::proxy

namespace grelay::proxy {

// Reading a PROXY protocol header (v1 or v2, told apart by their first bytes) that a load
// balancer in front of grelay sends first on each connection.
struct ProxyHeaderParse {
  enum class Status : uint8_t {
    Incomplete,  // a valid beginning: wait for more bytes
    Invalid,     // not a PROXY protocol header (or too long: see kMaxProxyHeader)
    Done,        // a whole header of `length` bytes
  };
  Status status = Status::Incomplete;
  size_t length = 0;
  // Done: whether `client` and `local` hold the addresses the header carries. False for
  // v1 UNKNOWN, v2 LOCAL (the balancer's own health checks) and v2 families other than
  // TCP over IPv4/IPv6: the connection's own addresses stand.
  bool hasAddresses = false;
  sockaddr_storage client{};
  sockaddr_storage local{};
};

// The longest header accepted: v2's 16-byte prefix plus up to 4 KiB of addresses and
// TLVs (cloud load balancers add a few dozen bytes of TLVs). v1 lines are at most 107.
constexpr size_t kMaxProxyHeader = 16 + 4096;

// Parses the bytes a connection started with. Needs no more than the header itself:
// while a header is Incomplete, every byte seen so far belongs to it.
ProxyHeaderParse parseProxyHeader(const uint8_t* data, size_t length);

}  // namespace grelay::proxy
