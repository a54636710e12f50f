// Fuzz target: the config value parsers on any text. The first byte picks the parser
// (0 size, 1 duration, 2 address), the rest is the text. Properties:
//   - never crash; a failure always says why (a non-empty reason, no newline);
//   - sizes and durations: what formatSize()/formatDuration() print for a parsed value
//     parses back to the same value (the loader's messages quote these), and a duration
//     is never 0 unless every part is 0 (rounded UP to whole milliseconds);
//   - addresses: a parsed address is IPv4 or IPv6 with a port 1..65535 equal to the text's,
//     and keeps the text as written.
// Host names never reach the network: offline_resolver.cc.
#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/loader.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace grelay::config;
using grelay::fuzz::printable;

void checkReason(const std::string& reason, std::string_view text) {
  FUZZ_CHECK(!reason.empty(), "a failure has a reason: '" + printable(text) + "'");
  FUZZ_CHECK(reason.find('\n') == std::string::npos, "reason on one line: " + reason);
}

void fuzzSize(std::string_view text) {
  std::string reason;
  const std::optional<uint64_t> size = parseSize(text, &reason);
  if (!size) {
    checkReason(reason, text);
    return;
  }
  const std::string shown = formatSize(*size);
  const std::optional<uint64_t> again = parseSize(shown);
  FUZZ_CHECK(again && *again == *size,
             "formatSize round trip: '" + printable(text) + "' -> " + shown);
}

void fuzzDuration(std::string_view text) {
  std::string reason;
  const std::optional<Duration> duration = parseDuration(text, &reason);
  if (!duration) {
    checkReason(reason, text);
    return;
  }
  FUZZ_CHECK(duration->count() >= 0, "non-negative: '" + printable(text) + "'");
  bool anyNonZeroDigit = false;
  for (char c : text) {
    anyNonZeroDigit |= c >= '1' && c <= '9';
  }
  if (anyNonZeroDigit) {
    FUZZ_CHECK(duration->count() > 0, "rounded up, never 0: '" + printable(text) + "'");
  }
  // Durations the text form can carry (N "ms" as microseconds fits 64 bits): rounding up
  // "18446744073709551615us" gives a millisecond count no text can spell, and the loader's
  // 24h limits reject it anyway.
  if (static_cast<uint64_t>(duration->count()) <= UINT64_MAX / 1000) {
    const std::string shown = formatDuration(*duration);
    const std::optional<Duration> again = parseDuration(shown);
    FUZZ_CHECK(again && *again == *duration,
               "formatDuration round trip: '" + printable(text) + "' -> " + shown);
  }
}

void fuzzAddress(std::string_view text) {
  std::string reason;
  const std::optional<Address> address = parseAddress(text, &reason);
  if (!address) {
    checkReason(reason, text);
    return;
  }
  const std::string ctx = "'" + printable(text) + "'";
  FUZZ_CHECK(address->text == text, "text kept: " + ctx);
  FUZZ_CHECK(address->family() == AF_INET || address->family() == AF_INET6, ctx);
  const uint16_t port =
      ntohs(address->family() == AF_INET
                ? reinterpret_cast<const sockaddr_in&>(address->storage).sin_port
                : reinterpret_cast<const sockaddr_in6&>(address->storage).sin6_port);
  const size_t colon = text.rfind(':');
  FUZZ_CHECK(colon != std::string_view::npos, ctx);
  const std::string written(text.substr(colon + 1));
  FUZZ_CHECK(port >= 1 && std::to_string(port) == std::to_string(std::stoul(written)),
             "port as written: " + ctx);
  if (!text.empty() && text[0] == '[') {
    FUZZ_CHECK(address->family() == AF_INET6, "bracketed host is IPv6: " + ctx);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0:
      fuzzSize(text);
      break;
    case 1:
      fuzzDuration(text);
      break;
    default:
      fuzzAddress(text);
      break;
  }
  return 0;
}
