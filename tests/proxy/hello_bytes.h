// A minimal TLS ClientHello for session and worker tests that route by server name.
#pragma once

#include <string>

namespace grelay::testing {

// One TLS record holding a ClientHello (one cipher suite, no compression) whose only
// extension is server_name = `name`.
inline std::string clientHelloFor(const std::string& name) {
  auto u16 = [](size_t v) {
    return std::string{static_cast<char>(v >> 8), static_cast<char>(v & 0xff)};
  };
  const std::string entry = std::string(1, '\0') + u16(name.size()) + name;
  const std::string sni = u16(0) + u16(entry.size() + 2) + u16(entry.size()) + entry;
  const std::string body = "\x03\x03" + std::string(32, 'r') + std::string(1, '\0') + u16(2) +
                           "\x13\x01" + "\x01" + std::string(1, '\0') + u16(sni.size()) + sni;
  const std::string message = "\x01" + std::string(1, '\0') + u16(body.size()) + body;
  return "\x16\x03\x01" + u16(message.size()) + message;
}

}  // namespace grelay::testing
