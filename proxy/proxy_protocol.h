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

}  // namespace grelay::proxy
