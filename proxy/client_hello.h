// The server name (SNI) a TLS client asks for, read from the ClientHello it sends first,
// without terminating TLS (like nginx's ssl_preread): it lets a listener route a connection
// by name and pass the client's bytes on untouched. grelay peeks at the stream (MSG_PEEK),
// so nothing is taken off the socket; while the result is Incomplete it waits until `need`
// bytes are there (SO_RCVLOWAT) and parses the longer prefix again from the start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace grelay::proxy {

// The most bytes of a client's stream read ahead to find its server name: a ClientHello
// longer than this (over several records) is routed as if it had none.
constexpr size_t kMaxClientHelloPeek = 18 * 1024;

struct ClientHelloParse {
  enum class Status : uint8_t { Incomplete, Invalid, Done };
  Status status = Status::Invalid;
  size_t need = 0;  // Incomplete: the bytes from the stream's start it needs to go on (> length,
                    // <= kMaxClientHelloPeek)
  std::string serverName;  // Done: the server_name extension's host_name, as sent; empty = none
  // Done: the protocols the client offers for ALPN, in its order; empty = no ALPN.
  std::vector<std::string> alpn;
};

// Parses the start of a TLS client's stream: TLS handshake records (content type 22, version
// major 3, length 1..16384) carrying a ClientHello (handshake type 1), reassembled across
// records. Invalid: not a TLS handshake (an HTTP request, SSLv2-style hello, another record
// type), a malformed ClientHello (an ALPN extension with an empty list or an empty
// protocol name among them), a host_name that is empty or longer than 255 bytes, or one
// that would need more than kMaxClientHelloPeek bytes.
//
// A result depends only on the bytes it needed: Done and Invalid stay so whatever follows
// `length`, and `need` never asks for a byte a Done result could do without (the rest of a
// record after the ClientHello, say), so a client that sends only its ClientHello and then
// waits is never left waiting. A malformed field is Invalid as soon as it is in the prefix.
// Reads only data[0, length); never throws.
ClientHelloParse parseClientHello(const uint8_t* data, size_t length);

}  // namespace grelay::proxy
