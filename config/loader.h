// Loading and validating grelay's TOML configuration into config::Config.
//
// The loader reports every problem it finds, each with the file, line and column of
// the offending key or value (for a missing required key: of the table that lacks it),
// sorted by position. It never throws and never crashes, whatever the input; it is
// also the entry point of the config fuzz target.
//
// Value syntax:
//   sizes      "512", "100B", "64KiB", "8MiB", "1GiB", "2TiB" (powers of 1024),
//              "64KB", "8MB", "1GB", "1TB" (powers of 1000), or a TOML integer (bytes).
//              Whole numbers only; an optional single space before the unit.
//   durations  one or more NUMBER UNIT parts, UNIT one of us, ms, s, m, h: "250ms", "5s",
//              "1h30m". A bare number is rejected (the unit is not guessed). The total is
//              rounded UP to whole milliseconds, so "100us" is 1ms and never 0.
//   addresses  "HOST:PORT" or "[IPV6]:PORT", port 1..65535. HOST is an IPv4 literal,
//              a bracketed IPv6 literal, or a name resolved at load time with
//              getaddrinfo (first result, every result for a server with
//              all_addresses; again every resolve_interval where set).
//              Dotted-digit hosts must be full IPv4 literals ("10.1:80" is rejected
//              rather than read as 10.0.0.1).
//   names      listener, upstream and mirror names match [A-Za-z0-9_-]+ (they become
//              metric label values).
//
// File paths (listener tls cert/key, upstream tls ca, tap path) are kept exactly as
// written: a relative path is relative to grelay's working directory, not to the
// config file. cert, key and ca must be readable regular files at load time.
//
// Ranges (besides those in config.h): connect_timeout, idle_timeout and
// handshake_timeout 1ms..24h; drain_timeout and shutdown_delay 0s..24h; max_lag >= chunk_size;
// tap max_size >= 1MiB; buffer_pool 4 x chunk_size..4GiB.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace grelay::config {

struct ConfigError {
  Location where;
  std::string message;

  // "FILE:LINE:COL: message", LINE and COL 1-based.
  std::string toString() const;
};

struct LoadResult {
  std::optional<Config> config;     // set only when errors is empty
  std::vector<ConfigError> errors;  // every problem found, sorted by line then column
  // With a config: settings that are valid but probably not what was meant (lintConfig).
  std::vector<ConfigError> warnings;

  bool ok() const { return config.has_value(); }
};

// Reads and validates the file at `path`. A file that cannot be read gives one error
// "PATH:1:1: cannot read config: <strerror>".
LoadResult loadFile(const std::string& path);

// Validates `text` as if it had been read from `file_name` (used in every Location).
// Never throws, whatever `text` holds.
LoadResult loadString(std::string_view text, const std::string& file_name);

// Valid settings that are probably mistakes, each at its table: a listener reachable
// from other hosts that takes PROXY headers from any peer; health checks no more frequent
// than fail_timeout (a dead server rejoins between checks); resolve_interval where no
// address has a host name.
std::vector<ConfigError> lintConfig(const Config& config);

// Value parsers (syntax above). On failure they return nullopt and, if `error` is
// given, store a short reason without the input text (e.g. "missing unit (e.g. 5s,
// 250ms, 1h)", "too large").
std::optional<uint64_t> parseSize(std::string_view text, std::string* error = nullptr);
std::optional<Duration> parseDuration(std::string_view text, std::string* error = nullptr);
std::optional<Address> parseAddress(std::string_view text, std::string* error = nullptr);
// "10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1" or "[::1]": an IPv4 or IPv6 literal with an
// optional prefix length; host bits past the prefix must be 0.
std::optional<Network> parseNetwork(std::string_view text, std::string* error = nullptr);
// Every address a valid `text` resolves to right now, in getaddrinfo's order, without
// duplicates (one for an IP literal); empty with `error` set when it does not resolve.
// parseAddress() is its first. Blocks for as long as the system's resolver takes.
std::vector<Address> resolveAddresses(std::string_view text, std::string* error = nullptr);
// "unix:PATH" (a socket file; PATH up to 107 bytes, relative to grelay's working directory)
// or "unix:@NAME" (Linux's abstract namespace): an upstream server or a mirror listening on
// a Unix domain socket.
std::optional<Address> parseUnixAddress(std::string_view text, std::string* error = nullptr);
// Whether `text` names a Unix domain socket ("unix:...").
inline bool isUnixAddressText(std::string_view text) {
  return text.starts_with("unix:");
}

// Formatting used in messages: 65536 -> "64KiB", 100 -> "100B"; 90000ms -> "90s".
std::string formatSize(uint64_t bytes);
std::string formatDuration(Duration duration);

}  // namespace grelay::config
