#include "proxy/tls_util.h"

#include <openssl/err.h>

#include <ctime>

namespace grelay::proxy {

std::string takeOpensslError() {
  const unsigned long e = ERR_peek_last_error();
  std::string out;
  if (e != 0) {
    const char* r = ERR_reason_error_string(e);
    out = r != nullptr ? r : "unknown OpenSSL error";
  }
  ERR_clear_error();
  return out.empty() ? "unknown OpenSSL error" : out;
}

std::optional<int64_t> unixTime(const ASN1_TIME* t) {
  tm out{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &out) != 1) {
    return std::nullopt;
  }
  return static_cast<int64_t>(timegm(&out));
}

std::string isoTime(int64_t unixSeconds) {
  const auto seconds = static_cast<time_t>(unixSeconds);
  tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace grelay::proxy
