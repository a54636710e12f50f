// A minimal TLS ClientHello for session and worker tests that route by server name.
#pragma once

#include <string>
#include <vector>

namespace grelay::testing {

// One TLS record holding a ClientHello (one cipher suite, no compression) whose extensions
// are server_name = `name` and, when `alpn` is not empty, ALPN with those protocols.
inline std::string clientHelloFor(const std::string& name,
                                  const std::vector<std::string>& alpn = {}) {
  auto u16 = [](size_t v) {
    return std::string{static_cast<char>(v >> 8), static_cast<char>(v & 0xff)};
  };
  const std::string entry = std::string(1, '\0') + u16(name.size()) + name;
  std::string sni = u16(0) + u16(entry.size() + 2) + u16(entry.size()) + entry;
  if (!alpn.empty()) {
    std::string list;
    for (const std::string& p : alpn) {
      list += static_cast<char>(p.size()) + p;
    }
    sni += u16(16) + u16(list.size() + 2) + u16(list.size()) + list;
  }
  const std::string body = "\x03\x03" + std::string(32, 'r') + std::string(1, '\0') + u16(2) +
                           "\x13\x01" + "\x01" + std::string(1, '\0') + u16(sni.size()) + sni;
  const std::string message = "\x01" + std::string(1, '\0') + u16(body.size()) + body;
  return "\x16\x03\x01" + u16(message.size()) + message;
}

}  // namespace grelay::testing
