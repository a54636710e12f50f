// Small OpenSSL helpers shared by the TLS contexts and the OCSP code: errors and dates as
// the messages and gauges give them.
#pragma once

#include <openssl/asn1.h>

#include <cstdint>
#include <optional>
#include <string>

namespace grelay::proxy {

// The reason of the last error on this thread's OpenSSL error queue ("unknown OpenSSL
// error" when there is none); the queue is cleared.
std::string takeOpensslError();

// `t` as Unix seconds; nullopt when absent or unreadable.
std::optional<int64_t> unixTime(const ASN1_TIME* t);

// "2026-12-07T20:22:16Z".
std::string isoTime(int64_t unixSeconds);

}  // namespace grelay::proxy
