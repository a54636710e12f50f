// Fuzz target: the PROXY protocol header parser (proxy/proxy_protocol.h), which reads the
// first bytes of every connection on a listener with accept_proxy_protocol. Properties:
//   - it reads only `length` bytes (ASan) and a Done header fits in them and in
//     kMaxProxyHeader;
//   - a Done header needs only its own bytes: parsing exactly those gives the same result,
//     and a prefix one byte shorter (and one half as long) is Incomplete, so grelay, which
//     takes bytes off the socket while a header is Incomplete, never takes stream bytes;
//   - addresses it returns are TCP over IPv4 or IPv6, and the v1 and v2 headers grelay
//     itself writes for them parse back to the same addresses;
//   - the TLVs it keeps end where the header ends, and a v2 header grelay writes passing
//     them on (with an authority found among them and a checksum) parses back whole.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "proxy/proxy_protocol.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using grelay::proxy::kMaxProxyHeader;
using grelay::proxy::parseProxyHeader;
using grelay::proxy::ProxyHeaderParse;
using Status = ProxyHeaderParse::Status;

bool sameAddress(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) {
    return false;
  }
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
  const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
  return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, 16) == 0;
}

bool sameParse(const ProxyHeaderParse& a, const ProxyHeaderParse& b) {
  return a.status == b.status && a.length == b.length && a.hasAddresses == b.hasAddresses &&
         (!a.hasAddresses || (sameAddress(a.client, b.client) && sameAddress(a.local, b.local)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 2 * kMaxProxyHeader) {
    return 0;
  }
  const ProxyHeaderParse parsed = parseProxyHeader(data, size);
  if (parsed.status != Status::Done) {
    FUZZ_CHECK(parsed.length == 0 && !parsed.hasAddresses, "proxy header");
    return 0;
  }
  FUZZ_CHECK(parsed.length > 0 && parsed.length <= size, "proxy header");
  FUZZ_CHECK(parsed.length <= kMaxProxyHeader, "proxy header");
  FUZZ_CHECK(sameParse(parseProxyHeader(data, parsed.length), parsed), "proxy header");
  FUZZ_CHECK(parseProxyHeader(data, parsed.length - 1).status == Status::Incomplete,
             "proxy header");
  FUZZ_CHECK(parseProxyHeader(data, parsed.length / 2).status == Status::Incomplete,
             "proxy header");
  FUZZ_CHECK(parsed.tlvLength == 0 || parsed.tlvOffset + parsed.tlvLength == parsed.length,
             "proxy header");
  if (!parsed.hasAddresses) {
    return 0;
  }
  FUZZ_CHECK(parsed.client.ss_family == parsed.local.ss_family, "proxy header");
  FUZZ_CHECK(parsed.client.ss_family == AF_INET || parsed.client.ss_family == AF_INET6,
             "proxy header");
  for (auto version : {grelay::config::ProxyProtocol::V1, grelay::config::ProxyProtocol::V2}) {
    const std::string again = grelay::proxy::proxyHeader(version, parsed.client, parsed.local);
    const ProxyHeaderParse back =
        parseProxyHeader(reinterpret_cast<const uint8_t*>(again.data()), again.size());
    FUZZ_CHECK(back.status == Status::Done && back.length == again.size(), "proxy header");
    FUZZ_CHECK(back.hasAddresses && sameAddress(back.client, parsed.client) &&
                   sameAddress(back.local, parsed.local),
               "proxy header");
  }
  const std::string_view received(reinterpret_cast<const char*>(data) + parsed.tlvOffset,
                                  parsed.tlvLength);
  const std::string passed = grelay::proxy::passedTlvs(received, {.authority = true});
  grelay::proxy::ProxyTlvs tlvs;
  tlvs.authority = grelay::proxy::findTlv(received, grelay::proxy::kTlvAuthority);
  tlvs.received = passed;
  tlvs.crc32c = true;
  const std::string again = grelay::proxy::proxyHeader(grelay::config::ProxyProtocol::V2,
                                                       parsed.client, parsed.local, &tlvs);
  const ProxyHeaderParse back =
      parseProxyHeader(reinterpret_cast<const uint8_t*>(again.data()), again.size());
  FUZZ_CHECK(again.size() > kMaxProxyHeader ||
                 (back.status == Status::Done && back.length == again.size()),
             "proxy header");
  return 0;
}
