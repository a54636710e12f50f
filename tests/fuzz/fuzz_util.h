// Helpers shared by the fuzz targets: a consumer of the fuzzer's bytes (works without
// clang's <fuzzer/FuzzedDataProvider.h>, so the replay builds compile with gcc) and a check
// macro that reports the broken property and aborts, which libFuzzer and the replay
// runner both treat as a crash.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace grelay::fuzz {

[[noreturn]] inline void fail(const char* file, int line, const char* what,
                              const std::string& why) {
  std::fprintf(stderr, "%s:%d: fuzz property broken: %s%s%s\n", file, line, what,
               why.empty() ? "" : ": ", why.c_str());
  std::fflush(stderr);
  std::abort();
}

// FUZZ_CHECK(cond, "context"): the property every input must keep.
#define FUZZ_CHECK(cond, why)                                 \
  do {                                                        \
    if (!(cond)) {                                            \
      ::grelay::fuzz::fail(__FILE__, __LINE__, #cond, (why)); \
    }                                                         \
  } while (0)

// Properties a known, reported bug breaks can be skipped while fuzzing for other bugs:
// GRELAY_FUZZ_IGNORE="id1,id2" makes FUZZ_CHECK_KNOWN(cond, "id1", why) pass. Regression runs
// (ctest) never set it.
inline bool knownIgnored(const char* id) {
  static const std::string ignore = [] {
    const char* env = std::getenv("GRELAY_FUZZ_IGNORE");
    return std::string(",") + (env ? env : "") + ",";
  }();
  return ignore.find(std::string(",") + id + ",") != std::string::npos;
}

#define FUZZ_CHECK_KNOWN(cond, id, why)                       \
  do {                                                        \
    if (!(cond) && !::grelay::fuzz::knownIgnored(id)) {       \
      ::grelay::fuzz::fail(__FILE__, __LINE__, #cond, (why)); \
    }                                                         \
  } while (0)

// Takes values off the front of the input; past the end everything reads as 0 / empty.
class ByteReader {
public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - pos_; }
  bool empty() const { return pos_ >= size_; }

  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (uint16_t{u8()} << 8)); }
  uint32_t u32() { return u16() | (uint32_t{u16()} << 16); }
  uint64_t u64() { return u32() | (uint64_t{u32()} << 32); }
  bool flag() { return (u8() & 1) != 0; }
  // A value in [lo, hi] (inclusive).
  uint64_t range(uint64_t lo, uint64_t hi) {
    if (hi <= lo) {
      return lo;
    }
    const uint64_t span = hi - lo;
    uint64_t v = span <= 0xff ? u8() : span <= 0xffff ? u16() : span <= 0xffffffffu ? u32() : u64();
    return lo + (span == UINT64_MAX ? v : v % (span + 1));
  }
  // Up to `max` bytes, length taken from the input.
  std::string_view bytes(size_t max) {
    const size_t n = std::min<size_t>(range(0, max), remaining());
    std::string_view out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  std::string_view rest() {
    std::string_view out(reinterpret_cast<const char*>(data_ + pos_), remaining());
    pos_ = size_;
    return out;
  }

private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Printable form of fuzz text for messages ("\x00" for bytes outside ASCII 32..126).
inline std::string printable(std::string_view text, size_t max = 200) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 32 && c < 127 && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (text.size() > max) {
    out += "...";
  }
  return out;
}

}  // namespace grelay::fuzz
