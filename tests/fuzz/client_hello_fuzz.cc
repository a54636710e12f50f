// Fuzz target: the TLS ClientHello parser (proxy/client_hello.h), which reads the first bytes
// of a client's stream to find the server name it asks for. grelay peeks at the socket and
// parses ever longer prefixes, so a result must depend only on the bytes it had. Properties:
//   - it reads only `length` bytes (ASan: every parse gets an exact-size copy);
//   - Incomplete asks for more than it had and at most kMaxClientHelloPeek, and a stream
//     that stops short of `need` (whatever the bytes before it) is never Done;
//   - Done and Invalid are final: the input with more bytes after it parses the same (status
//     name and ALPN protocols), so more of the stream never changes a decision made;
//   - Incomplete is Incomplete for every shorter prefix (checked: one byte shorter, half);
//   - a Done name is 1..255 bytes, and so is each ALPN protocol; other results carry none.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "proxy/client_hello.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using grelay::fuzz::printable;
using grelay::proxy::ClientHelloParse;
using grelay::proxy::kMaxClientHelloPeek;
using grelay::proxy::parseClientHello;
using Status = ClientHelloParse::Status;

ClientHelloParse parseCopy(const std::vector<uint8_t>& bytes, size_t length) {
  const std::vector<uint8_t> exact(bytes.begin(), bytes.begin() + length);
  return parseClientHello(exact.data(), exact.size());
}

bool sameResult(const ClientHelloParse& a, const ClientHelloParse& b) {
  return a.status == b.status && a.serverName == b.serverName && a.alpn == b.alpn &&
         (a.status != Status::Incomplete || a.need == b.need);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > kMaxClientHelloPeek + 64) {
    return 0;
  }
  const std::vector<uint8_t> input(data, data + size);
  const ClientHelloParse parsed = parseClientHello(data, size);
  FUZZ_CHECK(sameResult(parseCopy(input, size), parsed), "deterministic");
  if (parsed.status == Status::Done) {
    FUZZ_CHECK(parsed.serverName.size() <= 255, printable(parsed.serverName));  // 0 = none
    for (const std::string& protocol : parsed.alpn) {
      FUZZ_CHECK(!protocol.empty() && protocol.size() <= 255, "ALPN " + printable(protocol));
    }
  } else {
    FUZZ_CHECK(parsed.serverName.empty(), printable(parsed.serverName));
    FUZZ_CHECK(parsed.alpn.empty(), "ALPN protocols without a whole hello");
  }

  if (parsed.status == Status::Incomplete) {
    FUZZ_CHECK(parsed.need > size && parsed.need <= kMaxClientHelloPeek,
               std::to_string(size) + " -> " + std::to_string(parsed.need));
    for (size_t shorter : {size - (size > 0 ? 1 : 0), size / 2}) {
      FUZZ_CHECK(parseCopy(input, shorter).status == Status::Incomplete,
                 "prefix " + std::to_string(shorter));
    }
    // Filled up to one byte short of `need` with any bytes: still not Done, so `need` never
    // asks for more than a ClientHello could take.
    for (uint8_t fill : {0x00, 0x16, 0xff}) {
      std::vector<uint8_t> longer = input;
      longer.resize(parsed.need - 1, fill);
      FUZZ_CHECK(parseCopy(longer, longer.size()).status != Status::Done,
                 "need " + std::to_string(parsed.need) + ", fill " + std::to_string(fill));
    }
    return 0;
  }

  // Done or Invalid: final whatever follows. The followers: zeros, a handshake record
  // header, and the input itself again (a ClientHello's own bytes).
  std::vector<std::vector<uint8_t>> tails = {
      std::vector<uint8_t>(7, 0), {0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00}, input};
  for (const auto& tail : tails) {
    std::vector<uint8_t> longer = input;
    longer.insert(longer.end(), tail.begin(), tail.end());
    const ClientHelloParse again = parseCopy(longer, longer.size());
    FUZZ_CHECK(again.status == parsed.status && again.serverName == parsed.serverName &&
                   again.alpn == parsed.alpn,
               "with " + std::to_string(tail.size()) + " more bytes: " +
                   printable(again.serverName) + " vs " + printable(parsed.serverName));
  }
  return 0;
}
