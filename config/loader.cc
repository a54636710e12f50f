#include "config/loader.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace grelay::config {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr uint64_t kTiB = 1024 * kGiB;
constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();
constexpr Duration kMaxTimeout = 24h;
constexpr int64_t kMaxWeight = 256;  // HAProxy's bound

std::string errnoText(int error) {
  char buffer[256];
  return strerror_r(error, buffer, sizeof(buffer));  // GNU variant: returns the text
}

// A name or value from the file, quoted for a message; control bytes are escaped.
// Control characters as \xNN: one error stays one line (--check's output is parsed line
// by line), whatever the file's strings and keys hold.
std::string escaped(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string quoted(std::string_view text) {
  return "'" + escaped(text) + "'";
}

bool isName(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-';
  });
}

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

// Parses leading decimal digits of `text` from `pos` into `value`. Returns the number of
// digits, or -1 on overflow.
int parseDigits(std::string_view text, size_t& pos, uint64_t& value) {
  value = 0;
  int digits = 0;
  for (; pos < text.size() && isDigit(text[pos]); ++pos, ++digits) {
    uint64_t d = text[pos] - '0';
    if (value > (kNoLimit - d) / 10)
      return -1;
    value = value * 10 + d;
  }
  return digits;
}

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

const char* typeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
  }
  return "?";
}

bool sameEndpoint(const Address& a, const Address& b) {
  if (a.family() != b.family())
    return false;
  if (a.family() == AF_INET) {
    auto& x = reinterpret_cast<const sockaddr_in&>(a.storage);
    auto& y = reinterpret_cast<const sockaddr_in&>(b.storage);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  auto& x = reinterpret_cast<const sockaddr_in6&>(a.storage);
  auto& y = reinterpret_cast<const sockaddr_in6&>(b.storage);
  return x.sin6_port == y.sin6_port && x.sin6_scope_id == y.sin6_scope_id &&
         std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(x.sin6_addr)) == 0;
}

// "" when `path` is a readable regular file, otherwise why not.
std::string unreadableReason(const std::string& path) {
  // O_NONBLOCK: a FIFO must not block the loader.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0)
    return errnoText(errno);
  struct stat st {};
  std::string reason;
  if (::fstat(fd, &st) != 0) {
    reason = errnoText(errno);
  } else if (!S_ISREG(st.st_mode)) {
    reason = S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file";
  }
  ::close(fd);
  return reason;
}

// Walks a parsed TOML document and fills a Config, collecting every error.
//
// Each table is read by readTable() from a list of Fields: the key, whether it is
// required, and a Reader that checks the node's type and range and stores it. Fields
// are read in list order (so chunk_size is known before the sizes that depend on it);
// keys not in the list are reported as unknown.
class Loader {
public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  LoadResult load(std::string_view text) {
    config_.server.location.file = file_;  // line 0: no [server] table, all defaults
    try {
      toml::table root = toml::parse(text, std::string_view(file_));
      readRoot(root);
    } catch (const toml::parse_error& e) {
      // toml++ quotes the offending character raw, a newline included: one error must
      // stay one line (--check's output is parsed line by line).
      std::string text;
      for (unsigned char c : e.description()) {
        if (c < 0x20 || c == 0x7f) {
          static constexpr char kHex[] = "0123456789abcdef";
          text += "\\x";
          text += kHex[c >> 4];
          text += kHex[c & 15];
        } else {
          text += static_cast<char>(c);
        }
      }
      error(e.source(), text);
    } catch (const std::exception& e) {
      errors_.push_back({{file_, 1, 1}, std::string("cannot load config: ") + e.what()});
    } catch (...) {
      errors_.push_back({{file_, 1, 1}, "cannot load config: unknown error"});
    }
    std::stable_sort(errors_.begin(), errors_.end(), [](const auto& a, const auto& b) {
      return std::tie(a.where.line, a.where.column) < std::tie(b.where.line, b.where.column);
    });
    LoadResult result;
    if (errors_.empty()) {
      config_.path = file_;
      result.warnings = lintConfig(config_);
      result.config = std::move(config_);
    }
    result.errors = std::move(errors_);
    return result;
  }

private:
  // Checks and stores one value; false (after reporting) if it is not acceptable.
  using Reader = std::function<bool(std::string_view key, const toml::node& node)>;
  struct Field {
    std::string_view key;
    Reader read;
    bool required = false;
  };
  struct Seen {  // first definition of a unique name or address
    std::string name;
    Address address;
    Location where;
  };

  Location locate(const toml::source_region& region) const {
    return {file_, std::max<uint32_t>(region.begin.line, 1),
            std::max<uint32_t>(region.begin.column, 1)};
  }

  void error(const toml::source_region& where, std::string message) {
    errors_.push_back({locate(where), std::move(message)});
  }

  bool typeError(std::string_view key, const toml::node& node, std::string_view expected) {
    error(node.source(),
          quoted(key) + " must be " + std::string(expected) + ", got " + typeName(node.type()));
    return false;
  }

  bool rangeError(std::string_view key, const toml::node& node, const std::string& min,
                  const std::string& max, const std::string& got) {
    std::string range = max.empty() ? "at least " + min : "in " + min + ".." + max;
    error(node.source(), quoted(key) + " must be " + range + ", got " + got);
    return false;
  }

  static std::string firstAt(const Location& where) {
    return " (first at " + std::to_string(where.line) + ":" + std::to_string(where.column) + ")";
  }

  void readTable(const toml::table& table, const std::string& label,
                 const std::vector<Field>& fields) {
    for (const Field& field : fields) {
      if (const toml::node* node = table.get(field.key)) {
        field.read(field.key, *node);
      } else if (field.required) {
        error(table.source(), "missing required key " + quoted(field.key) + " " + label);
      }
    }
    for (const auto& entry : table) {
      const toml::key& key = entry.first;  // not a structured binding: lambdas capture it
      auto known = [&](const Field& f) { return f.key == key.str(); };
      if (std::any_of(fields.begin(), fields.end(), known))
        continue;
      std::string message = "unknown key " + quoted(key.str()) + " " + label;
      for (const Field& f : fields) {
        if (editDistance(key.str(), f.key) <= std::min<size_t>(2, f.key.size() / 2)) {
          message += " (did you mean " + quoted(f.key) + "?)";
          break;
        }
      }
      error(key.source(), message);
    }
  }

  // ---- Readers, one per value kind ----

  Reader subtable(std::string_view header, std::function<void(const toml::table&)> read) {
    return [this, header, read](std::string_view key, const toml::node& node) {
      if (const toml::table* t = node.as_table()) {
        read(*t);
        return true;
      }
      return typeError(key, node, "a table (" + std::string(header) + ")");
    };
  }

  Reader arrayOfTables(std::string_view header, std::function<void(const toml::table&)> read) {
    return [this, header, read](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr || !(array->empty() || array->is_array_of_tables())) {
        return typeError(key, node, "an array of tables (" + std::string(header) + ")");
      }
      for (const toml::node& element : *array)
        read(*element.as_table());
      return true;
    };
  }

  template <typename T>
  Reader integer(T* out, int64_t min, int64_t max) {
    return [this, out, min, max](std::string_view key, const toml::node& node) {
      const auto* value = node.as_integer();
      if (value == nullptr)
        return typeError(key, node, "an integer");
      if (value->get() < min || value->get() > max) {
        return rangeError(key, node, std::to_string(min), std::to_string(max),
                          std::to_string(value->get()));
      }
      *out = static_cast<T>(value->get());
      return true;
    };
  }

  Reader boolean(bool* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const auto* value = node.as_boolean();
      if (value == nullptr)
        return typeError(key, node, "a boolean");
      *out = value->get();
      return true;
    };
  }

  // A non-empty array of networks ("10.0.0.0/8", "192.0.2.7", "fd00::/8").
  Reader networks(NetworkSet* set, std::string whenAbsent) {
    return [this, set, whenAbsent](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr)
        return typeError(key, node, "an array of networks like [\"10.0.0.0/8\"]");
      if (array->empty()) {
        error(node.source(), quoted(key) + " must not be empty (leave it out " + whenAbsent + ")");
        return false;
      }
      bool ok = true;
      std::vector<Network> list;
      for (const toml::node& item : *array) {
        const auto* text = item.as_string();
        if (text == nullptr) {
          ok = typeError(key, item, "an array of strings like \"10.0.0.0/8\"");
          continue;
        }
        std::string why;
        std::optional<Network> network = parseNetwork(text->get(), &why);
        if (!network) {
          error(item.source(),
                "bad network " + quoted(text->get()) + " for " + quoted(key) + ": " + why);
          ok = false;
          continue;
        }
        list.push_back(std::move(*network));
      }
      *set = NetworkSet(std::move(list));
      return ok;
    };
  }

  // Any string without NUL bytes (they would silently cut paths and names short).
  Reader string(std::string* out, bool non_empty = false) {
    return [this, out, non_empty](std::string_view key, const toml::node& node) {
      const auto* value = node.as_string();
      if (value == nullptr)
        return typeError(key, node, "a string");
      const std::string& text = value->get();
      if (text.find('\0') != std::string::npos) {
        error(node.source(), quoted(key) + " must not contain NUL characters");
        return false;
      }
      if (non_empty && text.empty()) {
        error(node.source(), quoted(key) + " must not be empty");
        return false;
      }
      *out = text;
      return true;
    };
  }

  Reader name(std::string* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      std::string text;
      if (!string(&text)(key, node))
        return false;
      if (!isName(text)) {
        error(node.source(), quoted(key) + " must match [A-Za-z0-9_-]+, got " + quoted(text));
        return false;
      }
      *out = std::move(text);
      return true;
    };
  }

  // A path to a file that must be readable now; `what` names it in messages.
  Reader file(std::string* out, std::string_view what) {
    return [this, out, what](std::string_view key, const toml::node& node) {
      std::string path;
      if (!string(&path, true)(key, node))
        return false;
      std::string reason = unreadableReason(path);
      if (!reason.empty()) {
        error(node.source(),
              "cannot read " + std::string(what) + " file " + quoted(path) + ": " + reason);
        return false;
      }
      *out = std::move(path);
      return true;
    };
  }

  template <typename E>
  Reader oneOf(E* out, std::vector<E> choices) {
    return [this, out, choices](std::string_view key, const toml::node& node) {
      std::string text;
      if (!string(&text)(key, node))
        return false;
      std::string names;
      for (E choice : choices) {
        if (text == toString(choice)) {
          *out = choice;
          return true;
        }
        names += (names.empty() ? "" : ", ") + std::string(toString(choice));
      }
      error(node.source(), quoted(key) + " must be one of " + names + ", got " + quoted(text));
      return false;
    };
  }

  // Sizes: a string like "64KiB" or an integer byte count. `min_text` describes the
  // minimum when it is derived from another value ("chunk_size (64KiB)").
  template <typename T>
  Reader size(T* out, uint64_t min, uint64_t max, std::string min_text = "") {
    return [this, out, min, max, min_text](std::string_view key, const toml::node& node) {
      std::string low = min_text.empty() ? formatSize(min) : min_text;
      std::string high = max == kNoLimit ? "" : formatSize(max);
      uint64_t bytes = 0;
      if (const auto* number = node.as_integer()) {
        if (number->get() < 0)
          return rangeError(key, node, low, high, std::to_string(**number));
        bytes = static_cast<uint64_t>(number->get());
      } else if (const auto* text = node.as_string()) {
        std::string why;
        std::optional<uint64_t> parsed = parseSize(text->get(), &why);
        if (!parsed) {
          error(node.source(),
                "bad size " + quoted(text->get()) + " for " + quoted(key) + ": " + why);
          return false;
        }
        bytes = *parsed;
      } else {
        return typeError(key, node, "a size like \"64KiB\" or a byte count");
      }
      if (bytes < min || bytes > max)
        return rangeError(key, node, low, high, formatSize(bytes));
      *out = static_cast<T>(bytes);
      return true;
    };
  }

  Reader duration(Duration* out, Duration min, Duration max) {
    return [this, out, min, max](std::string_view key, const toml::node& node) {
      if (const auto* number = node.as_integer()) {
        error(node.source(), quoted(key) + " must be a duration with a unit, e.g. \"" +
                                 std::to_string(**number) + "s\" or \"" + std::to_string(**number) +
                                 "ms\", got integer " + std::to_string(**number));
        return false;
      }
      const auto* text = node.as_string();
      if (text == nullptr)
        return typeError(key, node, "a duration like \"5s\"");
      std::string why;
      std::optional<Duration> parsed = parseDuration(text->get(), &why);
      if (!parsed) {
        error(node.source(),
              "bad duration " + quoted(text->get()) + " for " + quoted(key) + ": " + why);
        return false;
      }
      if (*parsed < min || *parsed > max) {
        return rangeError(key, node, formatDuration(min), formatDuration(max),
                          formatDuration(*parsed));
      }
      *out = *parsed;
      return true;
    };
  }

  Reader address(Address* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      std::string text;
      if (!string(&text)(key, node))
        return false;
      std::string why;
      std::optional<Address> parsed = parseAddress(text, &why);
      if (!parsed) {
        error(node.source(), "bad address " + quoted(text) + " for " + quoted(key) + ": " + why);
        return false;
      }
      *out = std::move(*parsed);
      return true;
    };
  }

  // Where grelay connects to (an upstream server, a mirror): "HOST:PORT" or a Unix socket.
  Reader targetAddress(Address* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const std::optional<std::string_view> text = node.value<std::string_view>();
      if (!text || !isUnixAddressText(*text)) {
        return address(out)(key, node);
      }
      std::string why;
      std::optional<Address> parsed = parseUnixAddress(*text, &why);
      if (!parsed) {
        error(node.source(),
              "bad address " + quoted(std::string(*text)) + " for " + quoted(key) + ": " + why);
        return false;
      }
      *out = std::move(*parsed);
      return true;
    };
  }

  // A socket grelay binds (admin and listener listen addresses): unique across the file.
  Reader listenAddress(Address* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      if (!address(out)(key, node))
        return false;
      for (const Seen& seen : endpoints_) {
        if (sameEndpoint(seen.address, *out)) {
          error(node.source(),
                "duplicate listen address " + quoted(out->text) + firstAt(seen.where));
          return false;
        }
      }
      endpoints_.push_back({"", *out, locate(node.source())});
      return true;
    };
  }

  // A name that must be unique within `seen`; `what` says what kind of name it is.
  Reader uniqueName(std::string* out, std::vector<Seen>* seen, std::string_view what) {
    return [this, out, seen, what](std::string_view key, const toml::node& node) {
      if (!name(out)(key, node))
        return false;
      for (const Seen& first : *seen) {
        if (first.name == *out) {
          error(node.source(),
                "duplicate " + std::string(what) + " name " + quoted(*out) + firstAt(first.where));
          return false;
        }
      }
      seen->push_back({*out, {}, locate(node.source())});
      return true;
    };
  }

  // ---- Tables ----

  void readRoot(const toml::table& root) {
    readTable(
        root, "at top level",
        {
            {"server", subtable("[server]", [this](const auto& t) { readServer(t); })},
            {"admin", subtable("[admin]", [this](const auto& t) { readAdmin(t); })},
            {"upstream", subtable("[upstream.NAME]", [this](const auto& t) { readUpstreams(t); })},
            {"listener", arrayOfTables("[[listener]]", [this](const auto& t) { readListener(t); })},
        });
    if (config_.upstreams.empty()) {
      const toml::node* node = root.get("upstream");
      error(node ? node->source() : root.source(),
            "no upstream defined (add an [upstream.NAME] table)");
    }
    if (config_.listeners.empty()) {
      const toml::node* node = root.get("listener");
      error(node ? node->source() : root.source(),
            "no listener defined (add a [[listener]] table)");
    }
  }

  void readServer(const toml::table& table) {
    ServerConfig& s = config_.server;
    s.location = locate(table.source());
    readTable(table, "in [server]",
              {
                  {"workers", integer(&s.workers, 0, 1024)},
                  {"relay_path", oneOf(&s.relay_path, {RelayPath::Auto, RelayPath::Group,
                                                       RelayPath::Mainline, RelayPath::Copy})},
                  {"chunk_size",
                   [this, &s](std::string_view key, const toml::node& node) {
                     chunk_size_valid_ = size(&s.chunk_size, 4 * kKiB, kMiB)(key, node);
                     return chunk_size_valid_;
                   }},
                  {"max_connections", integer(&s.max_connections, 1, 10'000'000)},
                  {"drain_timeout", duration(&s.drain_timeout, 0ms, kMaxTimeout)},
                  {"shutdown_delay", duration(&s.shutdown_delay, 0ms, kMaxTimeout)},
                  {"buffer_pool",
                   [this, &s](std::string_view key, const toml::node& node) {
                     uint64_t min = chunk_size_valid_ ? 4ull * s.chunk_size : 0;
                     std::string min_text =
                         chunk_size_valid_ ? "4 x chunk_size (" + formatSize(min) + ")" : "";
                     return size(&s.buffer_pool, min, 4 * kGiB, min_text)(key, node);
                   }},
                  {"user", string(&s.user)},
                  {"splice", boolean(&s.splice)},
              });
  }

  void readAdmin(const toml::table& table) {
    Address listen;
    readTable(table, "in [admin]",
              {{"listen", listenAddress(&listen)},
               {"stall_timeout", duration(&config_.admin.stall_timeout, 2s, 1h)}});
    if (table.get("listen"))
      config_.admin.listen = std::move(listen);
  }

  void readUpstreams(const toml::table& pools) {
    for (auto&& [key, node] : pools) {
      UpstreamConfig& u = config_.upstreams.emplace_back();
      u.name = key.str();
      u.location = locate(node.source());
      std::string header = "[upstream." + escaped(u.name) + "]";
      if (!isName(u.name)) {
        error(key.source(), "upstream name " + quoted(u.name) + " must match [A-Za-z0-9_-]+");
      }
      const toml::table* t = node.as_table();
      if (t == nullptr) {
        typeError(u.name, node, "a table (" + header + ")");
        continue;
      }
      readTable(
          *t, "in " + header,
          {
              {"servers", servers(&u, "in " + header), true},
              {"balance",
               oneOf(&u.balance, {Balance::RoundRobin, Balance::LeastConn, Balance::Source})},
              {"hash_type", oneOf(&u.hash_type, {HashType::Map, HashType::Consistent})},
              {"max_fails", integer(&u.max_fails, 0, 1000)},
              {"fail_timeout", duration(&u.fail_timeout, 1ms, kMaxTimeout)},
              {"connect_timeout",
               [&](std::string_view key, const toml::node& node) {
                 return duration(&u.connect_timeout.emplace(), 1ms, kMaxTimeout)(key, node);
               }},
              {"check_interval", duration(&u.check_interval, 0ms, kMaxTimeout)},
              {"check_timeout", duration(&u.check_timeout, 1ms, 1min)},
              {"check_passes", integer(&u.check_passes, 1, 1000)},
              {"check_port", integer(&u.check_port, 1, 65535)},
              {"check_send", checkBytes(&u.check_send)},
              {"check_expect", checkBytes(&u.check_expect)},
              {"slow_start", duration(&u.slow_start, 0ms, kMaxTimeout)},
              {"queue_timeout", duration(&u.queue_timeout, 0ms, 1h)},
              {"max_queue", integer(&u.max_queue, 0, 10'000'000)},
              {"resolve_interval", resolveInterval(&u.resolve_interval)},
              {"resolve_hold", duration(&u.resolve_hold, 0ms, kMaxTimeout)},
              {"proxy_protocol", oneOf(&u.proxy_protocol,
                                       {ProxyProtocol::Off, ProxyProtocol::V1, ProxyProtocol::V2})},
              {"proxy_protocol_tlvs", proxyTlvs(&u.proxy_protocol_tlvs)},
              {"tls", upstreamTls(&u.tls, "in " + header + " tls")},
              {"source_address", sourceAddress(&u.source_address)},
          });
      if (u.source_address) {
        for (const UpstreamServer& server : u.servers) {
          sameFamily(*t->get("source_address"), *u.source_address, server.address,
                     "server " + quoted(server.address.text));
        }
      }
      tlvsNeedVersion2(*t, u.proxy_protocol_tlvs, u.proxy_protocol, "in " + header);
      unixServerRules(*t, u, "in " + header);
      for (const char* key : {"check_send", "check_expect", "check_port"}) {
        if (const toml::node* node = t->get(key);
            node != nullptr && u.check_interval.count() == 0) {
          error(node->source(), quoted(key) + " needs 'check_interval' " + ("in " + header) +
                                    ": it shapes the health checks");
        }
      }
      if (u.check_interval.count() > 0 && u.max_fails == 0) {
        error(t->get("check_interval")->source(),
              "'check_interval' needs 'max_fails' > 0 " + ("in " + header) +
                  ": health checks mark servers down through it");
      }
    }
  }

  // What a Unix-socket server does not have: a port for check_port, a host name for TLS
  // to verify its certificate against (unless tls.sni names it).
  void unixServerRules(const toml::table& t, const UpstreamConfig& u, const std::string& where) {
    auto unixServer = std::find_if(u.servers.begin(), u.servers.end(),
                                   [](const UpstreamServer& s) { return s.address.isUnix(); });
    if (unixServer == u.servers.end()) {
      return;
    }
    const std::string server = quoted(unixServer->address.text);
    if (const toml::node* node = t.get("check_port")) {
      error(node->source(), "'check_port' " + where + " needs every server to have a port: " +
                                server + " is a Unix socket");
    }
    if (u.tls.enabled && u.tls.verify && u.tls.sni.empty()) {
      error(t.get("tls")->source(),
            "'tls' " + where + " verifies each server's certificate against its host name, and " +
                server +
                " (a Unix socket) has none: set tls.sni to the name its certificate "
                "has (or verify = false)");
    }
  }

  // check_send, check_expect: 1..4096 bytes (what one read of the reply may hold).
  Reader checkBytes(std::string* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      if (!string(out)(key, node))
        return false;
      if (out->empty() || out->size() > 4096) {
        error(node.source(),
              quoted(key) + " must be 1 to 4096 bytes, got " + std::to_string(out->size()));
        return false;
      }
      return true;
    };
  }

  // The strings of `array`, in order, into `out`: each must pass `valid` (else the error
  // says it "must be " + `what`), none twice.
  bool distinctStrings(std::string_view key, const toml::array& array,
                       std::vector<std::string>* out,
                       const std::function<bool(std::string_view)>& valid,
                       const std::string& what) {
    bool ok = true;
    for (const toml::node& element : array) {
      const std::optional<std::string_view> text = element.value<std::string_view>();
      if (!text || !valid(*text)) {
        error(element.source(), quoted(key) + " entries must be " + what);
        ok = false;
      } else if (std::find(out->begin(), out->end(), *text) != out->end()) {
        error(element.source(), quoted(key) + " names " + quoted(*text) + " twice");
        ok = false;
      } else {
        out->emplace_back(*text);
      }
    }
    return ok;
  }

  // ALPN protocol names, in order of preference: ["h2", "http/1.1"]. Each is 1..255
  // printable ASCII bytes (what the TLS extension can carry), none twice.
  Reader protocols(std::vector<std::string>* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr)
        return typeError(key, node, "an array of protocol names like [\"h2\", \"http/1.1\"]");
      return distinctStrings(
          key, *array, out,
          [](std::string_view text) {
            return !text.empty() && text.size() <= 255 &&
                   std::all_of(text.begin(), text.end(), [](char c) { return c > ' ' && c < 127; });
          },
          "protocol names of 1 to 255 printable characters, like \"h2\" or \"http/1.1\"");
    };
  }

  // An "http://HOST[:PORT][/PATH]" URL (an OCSP responder); `proxy`: an HTTP proxy's,
  // "http://HOST:PORT" with no path.
  Reader httpUrl(std::string* out, bool proxy) {
    return [this, out, proxy](std::string_view key, const toml::node& node) {
      if (!string(out)(key, node))
        return false;
      const std::optional<HttpUrl> url = parseHttpUrl(*out);
      if (!url || (proxy && url->path != "/")) {
        error(node.source(), quoted(key) +
                                 (proxy ? " must be an HTTP proxy's http:// URL like "
                                          "\"http://proxy.internal:3128\", got "
                                        : " must be an http:// URL like "
                                          "\"http://ocsp.example.com/\" or "
                                          "\"http://10.0.0.5:8080/ocsp\", got ") +
                                 quoted(*out));
        return false;
      }
      return true;
    };
  }

  // Session ticket key files: ["ticket.key", "previous.key"], 1..8 distinct readable files
  // of 80 or 48 bytes (nginx's ssl_session_ticket_key format; `openssl rand 80`). What is in
  // them is read when the TLS contexts are built.
  Reader ticketKeyFiles(std::vector<std::string>* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr)
        return typeError(key, node, "an array of key files like [\"ticket.key\"]");
      if (array->empty() || array->size() > 8) {
        error(node.source(), quoted(key) +
                                 " must name 1 to 8 files (leave it out for keys made "
                                 "by grelay)");
        return false;
      }
      if (!distinctStrings(
              key, *array, out, [](std::string_view text) { return !text.empty(); },
              "paths of key files")) {
        return false;
      }
      bool ok = true;
      for (size_t i = 0; i < out->size(); ++i) {
        const toml::source_region where = (*array)[i].source();
        const std::string& path = (*out)[i];
        std::string reason = unreadableReason(path);
        struct stat st {};
        if (reason.empty() && stat(path.c_str(), &st) != 0) {
          reason = std::strerror(errno);
        }
        const auto bytes = static_cast<uint64_t>(st.st_size);
        if (!reason.empty()) {
          error(where, "cannot read session ticket key file " + quoted(path) + ": " + reason);
          ok = false;
        } else if (bytes != 80 && bytes != 48) {
          error(where, "session ticket key file " + quoted(path) + " has " + std::to_string(bytes) +
                           " bytes, not 80 (make one with: openssl rand 80 > FILE) or 48");
          ok = false;
        }
      }
      return ok;
    };
  }

  // TLS key exchange groups: ["X25519", "P-256"]: names of 1..64 [A-Za-z0-9_-] characters,
  // none twice, at least one. Whether OpenSSL knows them is checked when the TLS contexts
  // are built (--check does it too).
  Reader groups(std::vector<std::string>* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr)
        return typeError(key, node, "an array of group names like [\"X25519\", \"P-256\"]");
      if (array->empty()) {
        error(node.source(), quoted(key) + " must not be empty (leave it out for the default)");
        return false;
      }
      return distinctStrings(
          key, *array, out, [](std::string_view text) { return text.size() <= 64 && isName(text); },
          "group names like \"X25519\" or \"P-256\" ([A-Za-z0-9_-], 1 to 64 characters)");
    };
  }

  // ["alpn", "authority", "ssl", "unique_id", "received", "crc32c"], any of them.
  Reader proxyTlvs(ProxyProtocolTlvs* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr)
        return typeError(key, node, "an array of TLV names (\"alpn\", \"authority\", ...)");
      bool ok = true;
      for (const toml::node& element : *array) {
        const std::optional<std::string_view> text = element.value<std::string_view>();
        bool* flag = !text                  ? nullptr
                     : *text == "alpn"      ? &out->alpn
                     : *text == "authority" ? &out->authority
                     : *text == "ssl"       ? &out->ssl
                     : *text == "unique_id" ? &out->unique_id
                     : *text == "received"  ? &out->received
                     : *text == "crc32c"    ? &out->crc32c
                                            : nullptr;
        if (flag == nullptr) {
          error(element.source(),
                quoted(key) +
                    " entries must be one of alpn, authority, ssl, unique_id, received, "
                    "crc32c, "
                    "got " +
                    (text ? quoted(*text) : std::string("a non-string")));
          ok = false;
          continue;
        }
        *flag = true;
      }
      return ok;
    };
  }

  // "HOST:PORT", or { address = "HOST:PORT", weight = N, backup = BOOL }.
  Reader servers(UpstreamConfig* u, const std::string& label) {
    return [this, u, label](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr)
        return typeError(key, node, "an array of addresses");
      if (array->empty()) {
        error(node.source(), quoted(key) + " must not be empty " + label);
        return false;
      }
      std::vector<Location> first;
      // Each endpoint and name -> the first server with it: thousands of servers (a name
      // with all_addresses) are checked in linear time.
      std::unordered_map<std::string, size_t> byEndpoint;
      std::unordered_map<std::string, size_t> byName;
      bool readAll = true;
      uint32_t entry = 0;
      for (const toml::node& element : *array) {
        UpstreamServer server;
        server.entry = entry++;
        if (const toml::table* t = element.as_table()) {
          bool ok = true;
          readTable(*t, label + " server",
                    {
                        {"address",
                         [&](std::string_view k, const toml::node& n) {
                           return ok = targetAddress(&server.address)(k, n);
                         },
                         true},
                        {"name", name(&server.name)},
                        {"weight", integer(&server.weight, 1, kMaxWeight)},
                        {"backup", boolean(&server.backup)},
                        {"max_conns", integer(&server.max_conns, 0, 10'000'000)},
                        {"all_addresses", boolean(&server.all_addresses)},
                    });
          if (!ok || t->get("address") == nullptr) {
            readAll = false;
            continue;
          }
        } else if (element.is_string()) {
          if (!targetAddress(&server.address)(key, element)) {
            readAll = false;
            continue;
          }
        } else {
          typeError(key, element,
                    "an array of addresses (\"HOST:PORT\" or { address = \"HOST:PORT\", "
                    "weight = N, backup = true, ... })");
          readAll = false;
          continue;
        }
        std::vector<UpstreamServer> add{server};
        if (server.all_addresses && server.address.isUnix()) {
          error(element.source(), "'all_addresses' " + label +
                                      " needs a host name to look up, "
                                      "not the Unix socket " +
                                      quoted(server.address.text));
          readAll = false;
          continue;
        }
        if (server.all_addresses) {
          // Every address the name has now (parseAddress kept the first).
          std::string why;
          add = expandServer(server, resolveAddresses(server.address.text, &why), {});
          if (add.empty()) {
            error(element.source(),
                  "bad address " + quoted(server.address.text) + " " + label + ": " + why);
            continue;
          }
        }
        bool duplicate = false;
        for (const UpstreamServer& s : add) {
          auto it = byEndpoint.find(endpointKey(s.address));
          if (it != byEndpoint.end()) {
            error(element.source(),
                  "duplicate server " + quoted(s.address.text) +
                      (s.all_addresses ? " (an address of " + quoted(s.host) + ")" : "") + " " +
                      label + firstAt(first[it->second]));
            duplicate = true;
            break;
          }
        }
        if (duplicate) {
          continue;
        }
        if (!server.name.empty()) {
          auto other = byName.find(server.name);
          if (other != byName.end()) {
            error(element.source(), "duplicate server name " + quoted(server.name) + " " + label +
                                        firstAt(first[other->second]));
            continue;
          }
          byName.emplace(server.name, u->servers.size());
        }
        for (UpstreamServer& s : add) {
          byEndpoint.emplace(endpointKey(s.address), u->servers.size());
          first.push_back(locate(element.source()));
          u->servers.push_back(std::move(s));
        }
      }
      bool allBackups = std::all_of(u->servers.begin(), u->servers.end(),
                                    [](const UpstreamServer& s) { return s.backup; });
      if (readAll && allBackups) {
        error(node.source(), "every server " + label + " is a backup: at least one must not be");
        return false;
      }
      return true;
    };
  }

  Reader upstreamTls(UpstreamTlsConfig* tls, const std::string& label) {
    return [this, tls, label](std::string_view key, const toml::node& node) {
      tls->location = locate(node.source());
      if (const auto* enabled = node.as_boolean()) {
        tls->enabled = enabled->get();
        return true;
      }
      if (const toml::table* t = node.as_table()) {
        tls->enabled = true;
        readTable(*t, label,
                  {
                      {"ca", file(&tls->ca, "ca")},
                      {"crl", file(&tls->crl, "crl")},
                      {"sni", string(&tls->sni)},
                      {"verify", boolean(&tls->verify)},
                      {"alpn", protocols(&tls->alpn)},
                      {"groups", groups(&tls->groups)},
                      {"forward_sni", boolean(&tls->forward_sni)},
                      {"session_reuse", boolean(&tls->session_reuse)},
                      {"cert", file(&tls->cert, "cert")},
                      {"key", file(&tls->key, "key")},
                  });
        if (const toml::node* crl = t->get("crl"); crl != nullptr && !tls->verify) {
          error(crl->source(), "'crl' with 'verify = false' " + label +
                                   ": nothing is verified, so nothing is revoked");
        }
        if ((t->get("cert") == nullptr) != (t->get("key") == nullptr)) {
          error(t->source(), "'cert' and 'key' go together " + label +
                                 ": a client certificate needs its private key");
        }
        return true;
      }
      return typeError(key, node, "true, false or a table like { ca = \"...\", sni = \"...\" }");
    };
  }

  void readListener(const toml::table& table) {
    ListenerConfig l;
    l.location = locate(table.source());
    bool upstream_ok = false;
    mirror_names_.clear();
    readTable(
        table, "in [[listener]]",
        {
            {"name", uniqueName(&l.name, &listener_names_, "listener"), true},
            {"listen", listenAddress(&l.listen), true},
            {"upstream",
             [&](std::string_view key, const toml::node& node) {
               return upstream_ok = string(&l.upstream, true)(key, node);
             }},
            {"connect_timeout", duration(&l.connect_timeout, 1ms, kMaxTimeout)},
            {"idle_timeout", duration(&l.idle_timeout, 1ms, kMaxTimeout)},
            {"max_session_duration", duration(&l.max_session_duration, 0ms, 30 * kMaxTimeout)},
            {"tcp_keepalive", duration(&l.tcp_keepalive, 0ms, 2h)},
            {"max_connections", integer(&l.max_connections, 0, 10'000'000)},
            {"max_connections_per_client", integer(&l.max_connections_per_client, 0, 10'000'000)},
            {"max_connection_rate", integer(&l.max_connection_rate, 0, 1'000'000)},
            {"max_connection_rate_per_client",
             integer(&l.max_connection_rate_per_client, 0, 1'000'000)},
            {"accept_proxy_protocol", boolean(&l.accept_proxy_protocol)},
            {"proxy_protocol_from",
             networks(&l.proxy_protocol_from, "to accept a header from any peer")},
            {"allow", networks(&l.allow, "to allow every client")},
            {"access_log", string(&l.access_log)},
            {"tls", subtable("tls = { cert = \"...\", key = \"...\" }",
                             [&](const auto& t) { readListenerTls(t, l.tls.emplace()); })},
            {"mirror",
             arrayOfTables("[[listener.mirror]]",
                           [&](const auto& t) { readMirror(t, l.mirrors.emplace_back()); })},
            {"tap",
             subtable("[listener.tap]", [&](const auto& t) { readTap(t, l.tap.emplace()); })},
            {"route", arrayOfTables("[[listener.route]]",
                                    [&](const auto& t) { readRoute(t, l.routes.emplace_back()); })},
        });
    if (const toml::node* node = table.get("proxy_protocol_from");
        node != nullptr && !l.accept_proxy_protocol) {
      error(node->source(),
            "'proxy_protocol_from' needs 'accept_proxy_protocol = true' in "
            "[[listener]]: it says who may send a PROXY protocol header");
    }
    if (upstream_ok) {
      findUpstream(*table.get("upstream"), l.upstream, &l.upstream_index);
    } else if (table.get("upstream") == nullptr && l.routes.empty()) {
      // Only routes may stand in for it (their sessions go somewhere).
      error(table.source(), "missing required key 'upstream' in [[listener]]");
    }
    checkRouteNames(l);
    config_.listeners.push_back(std::move(l));
  }

  void findUpstream(const toml::node& node, const std::string& name, size_t* index) {
    auto named = [&](const UpstreamConfig& u) { return u.name == name; };
    auto it = std::find_if(config_.upstreams.begin(), config_.upstreams.end(), named);
    if (it == config_.upstreams.end()) {
      error(node.source(), "unknown upstream " + quoted(name));
    } else {
      *index = static_cast<size_t>(it - config_.upstreams.begin());
    }
  }

  void readRoute(const toml::table& table, RouteConfig& r) {
    r.location = locate(table.source());
    bool upstream_ok = false;
    readTable(table, "in [[listener.route]]",
              {
                  {"sni", serverNames(&r.sni)},
                  {"alpn", protocols(&r.alpn)},
                  {"upstream",
                   [&](std::string_view key, const toml::node& node) {
                     return upstream_ok = string(&r.upstream)(key, node);
                   },
                   true},
              });
    if (upstream_ok) {
      findUpstream(*table.get("upstream"), r.upstream, &r.upstream_index);
    }
    if (table.get("sni") == nullptr && table.get("alpn") == nullptr) {
      error(table.source(),
            "a [[listener.route]] needs 'sni' or 'alpn' (or both): what it "
            "takes sessions by");
    } else if (const toml::node* alpn = table.get("alpn"); alpn != nullptr && r.alpn.empty()) {
      error(alpn->source(), "'alpn' must not be empty (leave it out to match any protocol)");
    }
  }

  // Host names ("api.example.com") or wildcards ("*.example.com"), stored lower-case.
  Reader serverNames(std::vector<std::string>* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      const toml::array* array = node.as_array();
      if (array == nullptr || array->empty())
        return typeError(key, node, "a non-empty array of host names like [\"api.example.com\"]");
      bool ok = true;
      for (const toml::node& element : *array) {
        const std::optional<std::string_view> text = element.value<std::string_view>();
        std::string name = text ? canonicalHostName(*text) : std::string();
        if (!hostPattern(name)) {
          error(element.source(), quoted(key) +
                                      " entries must be host names like \"api.example.com\" "
                                      "or wildcards like \"*.example.com\"");
          ok = false;
        } else if (std::find(out->begin(), out->end(), name) != out->end()) {
          error(element.source(), quoted(key) + " names " + quoted(name) + " twice");
          ok = false;
        } else {
          out->push_back(std::move(name));
        }
      }
      return ok;
    };
  }

  // A lower-case host name of labels [a-z0-9_-], 1 to 63 characters each, at most 253
  // characters in all; the first label may be "*" (a wildcard over the rest).
  static bool hostPattern(std::string_view name) {
    if (name.starts_with("*.")) {
      name.remove_prefix(2);
    }
    if (name.empty() || name.size() > 253) {
      return false;
    }
    size_t label = 0;
    for (char c : name) {
      if (c == '.') {
        if (label == 0) {
          return false;
        }
        label = 0;
      } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
        if (++label > 63) {
          return false;
        }
      } else {
        return false;
      }
    }
    return label > 0;
  }

  // A name (or none) with a protocol (or none) in two routes of a listener would route by
  // the order of the tables: refused, so that routeFor() never has a tie.
  void checkRouteNames(const ListenerConfig& l) {
    static const std::vector<std::string> kAny{""};
    auto names = [](const RouteConfig& r) -> const std::vector<std::string>& {
      return r.sni.empty() ? kAny : r.sni;
    };
    auto protocols = [](const RouteConfig& r) -> const std::vector<std::string>& {
      return r.alpn.empty() ? kAny : r.alpn;
    };
    auto has = [](const std::vector<std::string>& list, const std::string& item) {
      return std::find(list.begin(), list.end(), item) != list.end();
    };
    for (size_t r = 0; r < l.routes.size(); ++r) {
      for (size_t q = 0; q < r; ++q) {
        for (const std::string& name : names(l.routes[r])) {
          if (!has(names(l.routes[q]), name)) {
            continue;
          }
          for (const std::string& protocol : protocols(l.routes[r])) {
            if (!has(protocols(l.routes[q]), protocol)) {
              continue;
            }
            const std::string what = (name.empty() ? std::string("any name") : quoted(name)) +
                                     (protocol.empty() ? "" : " with ALPN " + quoted(protocol));
            errors_.push_back({l.routes[r].location, "listener " + quoted(l.name) + ": " + what +
                                                         " is in two routes (also line " +
                                                         std::to_string(l.routes[q].location.line) +
                                                         ")"});
          }
        }
      }
    }
  }

  void readListenerTls(const toml::table& table, ListenerTlsConfig& tls) {
    tls.location = locate(table.source());
    readTable(
        table, "in [[listener]] tls",
        {
            {"cert", file(&tls.cert, "cert"), true},
            {"key", file(&tls.key, "key"), true},
            {"ocsp_response", file(&tls.ocsp_response, "ocsp_response")},
            {"certs", arrayOfTables("[[listener]] tls certs",
                                    [this, &tls](const toml::table& t) {
                                      CertificateFiles& c = tls.certs.emplace_back();
                                      c.location = locate(t.source());
                                      readTable(t, "in [[listener]] tls certs",
                                                {{"cert", file(&c.cert, "cert"), true},
                                                 {"key", file(&c.key, "key"), true},
                                                 {"ocsp_response",
                                                  file(&c.ocsp_response, "ocsp_response")}});
                                    })},
            {"handshake_timeout", duration(&tls.handshake_timeout, 1ms, kMaxTimeout)},
            {"min_version",
             [this, &tls](std::string_view key, const toml::node& node) {
               if (!string(&tls.min_version)(key, node))
                 return false;
               if (tls.min_version != "1.2" && tls.min_version != "1.3") {
                 error(node.source(),
                       quoted(key) + " must be one of 1.2, 1.3, got " + quoted(tls.min_version));
                 return false;
               }
               return true;
             }},
            {"ciphers", string(&tls.ciphers, true)},
            {"ciphersuites", string(&tls.ciphersuites, true)},
            {"groups", groups(&tls.groups)},
            {"alpn", protocols(&tls.alpn)},
            {"strict_sni", boolean(&tls.strict_sni)},
            {"session_tickets", boolean(&tls.session_tickets)},
            {"session_ticket_rotation", duration(&tls.session_ticket_rotation, 1s, 24h)},
            {"session_ticket_keys", ticketKeyFiles(&tls.session_ticket_keys)},
            {"client_ca", file(&tls.client_ca, "client_ca")},
            {"client_crl", file(&tls.client_crl, "client_crl")},
            {"ocsp_update", boolean(&tls.ocsp_update)},
            {"ocsp_responder", httpUrl(&tls.ocsp_responder, false)},
            {"ocsp_proxy", httpUrl(&tls.ocsp_proxy, true)},
            {"ocsp_update_min_delay", duration(&tls.ocsp_update_min_delay, 1s, 24h)},
            {"ocsp_update_max_delay", duration(&tls.ocsp_update_max_delay, 1s, 24h)},
            {"client_verify",
             [this, &tls](std::string_view key, const toml::node& node) {
               std::string text;
               if (!string(&text)(key, node))
                 return false;
               if (text != "required" && text != "optional") {
                 error(node.source(),
                       quoted(key) + " must be one of required, optional, got " + quoted(text));
                 return false;
               }
               tls.client_cert_optional = text == "optional";
               return true;
             }},
        });
    if (const toml::node* keys = table.get("session_ticket_keys")) {
      if (const auto* on = table.get("session_tickets"); on != nullptr && !on->value_or(true)) {
        error(keys->source(),
              "'session_ticket_keys' with 'session_tickets = false': tickets are "
              "off, so keys are of no use");
      }
      if (const toml::node* rotation = table.get("session_ticket_rotation")) {
        error(rotation->source(),
              "'session_ticket_rotation' with 'session_ticket_keys': keys from files change "
              "when the files do (a new first key, the old one after it, then SIGHUP)");
      }
    }
    for (const char* key :
         {"ocsp_responder", "ocsp_proxy", "ocsp_update_min_delay", "ocsp_update_max_delay"}) {
      if (const toml::node* node = table.get(key); node != nullptr && !tls.ocsp_update) {
        error(node->source(), quoted(key) +
                                  " needs 'ocsp_update = true' in [[listener]] tls: it is how "
                                  "grelay fetches OCSP responses");
      }
    }
    if (tls.ocsp_update_min_delay > tls.ocsp_update_max_delay) {
      if (const toml::node* node = table.get("ocsp_update_min_delay")) {
        error(node->source(), "'ocsp_update_min_delay' (" +
                                  formatDuration(tls.ocsp_update_min_delay) +
                                  ") must not exceed 'ocsp_update_max_delay' (" +
                                  formatDuration(tls.ocsp_update_max_delay) + ")");
      } else if (const toml::node* max = table.get("ocsp_update_max_delay")) {
        error(max->source(), "'ocsp_update_max_delay' (" +
                                 formatDuration(tls.ocsp_update_max_delay) +
                                 ") must not be below 'ocsp_update_min_delay' (" +
                                 formatDuration(tls.ocsp_update_min_delay) + ")");
      }
    }
    for (const char* key : {"client_verify", "client_crl"}) {
      if (const toml::node* node = table.get(key);
          node != nullptr && table.get("client_ca") == nullptr) {
        error(node->source(), quoted(key) +
                                  " needs 'client_ca' in [[listener]] tls: the CAs to verify "
                                  "against");
      }
    }
  }

  void readMirror(const toml::table& table, MirrorConfig& m) {
    m.location = locate(table.source());
    readTable(
        table, "in [[listener.mirror]]",
        {
            {"name", uniqueName(&m.name, &mirror_names_, "mirror"), true},
            {"address", targetAddress(&m.address)},
            {"upstream", string(&m.upstream, true)},
            {"sample_percent", integer(&m.sample_percent, 0, 100)},
            {"max_lag", maxLag(&m.max_lag)},
            {"direction", oneOf(&m.direction, {MirrorDirection::Request, MirrorDirection::Both})},
            {"max_fails", integer(&m.max_fails, 0, 1000)},
            {"fail_timeout", duration(&m.fail_timeout, 1ms, kMaxTimeout)},
            {"resolve_interval", resolveInterval(&m.resolve_interval)},
            {"resolve_hold", duration(&m.resolve_hold, 0ms, kMaxTimeout)},
            {"source_address", sourceAddress(&m.source_address)},
            {"proxy_protocol",
             oneOf(&m.proxy_protocol, {ProxyProtocol::Off, ProxyProtocol::V1, ProxyProtocol::V2})},
            {"proxy_protocol_tlvs", proxyTlvs(&m.proxy_protocol_tlvs)},
        });
    tlvsNeedVersion2(table, m.proxy_protocol_tlvs, m.proxy_protocol, "in [[listener.mirror]]");
    mirrorTarget(table, m);
    if (m.source_address && m.address.length != 0) {
      sameFamily(*table.get("source_address"), *m.source_address, m.address,
                 "the mirror's address " + quoted(m.address.text));
    }
  }

  // A mirror sends to its `address` or to a server of its `upstream` pool, whose own
  // settings then stand for the mirror's address-bound ones.
  void mirrorTarget(const toml::table& table, MirrorConfig& m) {
    const toml::node* address = table.get("address");
    const toml::node* upstream = table.get("upstream");
    if ((address == nullptr) == (upstream == nullptr)) {
      error(address != nullptr ? address->source() : table.source(),
            std::string(address != nullptr ? "both 'address' and 'upstream'"
                                           : "neither 'address' nor 'upstream'") +
                " in [[listener.mirror]]: a mirror sends to one address or to a pool's servers");
      return;
    }
    if (upstream == nullptr || m.upstream.empty()) {
      return;
    }
    size_t before = errors_.size();
    findUpstream(*upstream, m.upstream, &m.upstream_index);
    if (errors_.size() != before) {
      return;
    }
    for (const char* key :
         {"max_fails", "fail_timeout", "resolve_interval", "resolve_hold", "source_address"}) {
      if (const toml::node* node = table.get(key)) {
        error(node->source(), quoted(key) +
                                  " with 'upstream' in [[listener.mirror]]: the "
                                  "pool's own applies to its servers (set it in "
                                  "[upstream." +
                                  m.upstream + "])");
      }
    }
    if (config_.upstreams[m.upstream_index].tls.enabled) {
      error(upstream->source(), "mirror " + quoted(m.name) + ": upstream " + quoted(m.upstream) +
                                    " has 'tls': mirrors send the bytes as they are, never "
                                    "through TLS");
    }
  }

  void tlvsNeedVersion2(const toml::table& t, const ProxyProtocolTlvs& tlvs, ProxyProtocol version,
                        const std::string& where) {
    if (const toml::node* node = t.get("proxy_protocol_tlvs");
        node != nullptr && tlvs.any() && version != ProxyProtocol::V2) {
      error(node->source(), "'proxy_protocol_tlvs' needs 'proxy_protocol = \"v2\"' " + where +
                                ": only version 2 headers carry TLVs");
    }
  }

  // source_address: an IP address (no port, no name) grelay binds its connects to.
  Reader sourceAddress(std::optional<Address>* out) {
    return [this, out](std::string_view key, const toml::node& node) {
      std::string text;
      if (!string(&text)(key, node))
        return false;
      Address a;
      a.text = text;
      auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
      auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
      if (text.find('\0') == std::string::npos &&
          inet_pton(AF_INET, text.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        a.length = sizeof(sockaddr_in);
      } else if (text.find('\0') == std::string::npos &&
                 inet_pton(AF_INET6, text.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        a.length = sizeof(sockaddr_in6);
      } else {
        error(node.source(), quoted(key) + " must be an IPv4 or IPv6 address of this host, " +
                                 "like \"10.0.0.5\" or \"fd00::5\" (no port, no name), got " +
                                 quoted(text));
        return false;
      }
      *out = std::move(a);
      return true;
    };
  }

  // A connect from `source` to `to` needs both of one family.
  void sameFamily(const toml::node& where, const Address& source, const Address& to,
                  const std::string& what) {
    if (to.isUnix()) {
      error(where.source(), "source_address " + quoted(source.text) + " cannot apply to " + what +
                                ", a Unix socket: a connection to it leaves from no IP address");
      return;
    }
    if (source.family() != to.family()) {
      auto family = [](const Address& a) { return a.family() == AF_INET ? "IPv4" : "IPv6"; };
      error(where.source(), "source_address " + quoted(source.text) + " is " + family(source) +
                                " but " + what + " is " + family(to) +
                                ": a connection cannot leave from one family to the other");
    }
  }

  // 0 (off) or at least 100ms: a lookup is a round trip to the resolver at worst.
  Reader resolveInterval(Duration* out) {
    Reader read = duration(out, 0ms, kMaxTimeout);
    return [this, out, read](std::string_view key, const toml::node& node) {
      if (!read(key, node))
        return false;
      if (out->count() > 0 && *out < 100ms) {
        error(node.source(), quoted(key) + " must be 0 (off) or at least 100ms");
        *out = Duration{0};
        return false;
      }
      return true;
    };
  }

  void readTap(const toml::table& table, TapConfig& tap) {
    tap.location = locate(table.source());
    readTable(table, "in [listener.tap]",
              {
                  {"path", string(&tap.path, true), true},
                  {"max_size", size(&tap.max_size, kMiB, kNoLimit)},
                  {"max_lag", maxLag(&tap.max_lag)},
              });
  }

  // Mirror and tap byte budgets: at least one chunk.
  Reader maxLag(uint64_t* out) {
    if (!chunk_size_valid_)
      return size(out, 0, kNoLimit);
    uint64_t chunk = config_.server.chunk_size;
    return size(out, chunk, kNoLimit, "chunk_size (" + formatSize(chunk) + ")");
  }

  std::string file_;
  Config config_;
  std::vector<ConfigError> errors_;
  bool chunk_size_valid_ = true;
  std::vector<Seen> endpoints_;       // admin and listener listen addresses
  std::vector<Seen> listener_names_;  // listener names
  std::vector<Seen> mirror_names_;    // mirror names of the listener being read
};

}  // namespace

std::vector<ConfigError> lintConfig(const Config& config) {
  std::vector<ConfigError> warnings;
  auto loopback = [](const Address& a) {
    if (a.family() == AF_INET) {
      return (ntohl(reinterpret_cast<const sockaddr_in&>(a.storage).sin_addr.s_addr) >> 24) == 127;
    }
    const in6_addr& a6 = reinterpret_cast<const sockaddr_in6&>(a.storage).sin6_addr;
    return a.family() == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&a6);
  };
  for (const UpstreamConfig& u : config.upstreams) {
    const std::string pool = "upstream " + u.name + ": ";
    if (u.check_interval.count() > 0 && u.check_interval >= u.fail_timeout) {
      warnings.push_back({u.location, pool + "check_interval (" + formatDuration(u.check_interval) +
                                          ") is not below fail_timeout (" +
                                          formatDuration(u.fail_timeout) +
                                          "): a dead server rejoins the rotation between checks"});
    }
    if (u.hash_type == HashType::Consistent && u.balance != Balance::Source) {
      warnings.push_back({u.location, pool + "hash_type has no effect unless balance = "
                                             "\"source\""});
    }
    if (u.queue_timeout.count() > 0 &&
        std::none_of(u.servers.begin(), u.servers.end(),
                     [](const UpstreamServer& s) { return s.max_conns > 0; })) {
      warnings.push_back({u.location, pool + "queue_timeout has no effect: no server has "
                                             "max_conns"});
    }
    if (u.slow_start.count() > 0 && u.balance == Balance::Source) {
      warnings.push_back({u.location, pool + "slow_start has no effect with balance = "
                                             "\"source\": a client's server never depends on "
                                             "load"});
    }
    if (u.resolve_interval.count() > 0 &&
        std::none_of(u.servers.begin(), u.servers.end(),
                     [](const UpstreamServer& s) { return s.address.host_name; })) {
      const bool sockets = std::any_of(u.servers.begin(), u.servers.end(),
                                       [](const UpstreamServer& s) { return s.address.isUnix(); });
      warnings.push_back({u.location, pool +
                                          "resolve_interval has no effect: every server is "
                                          "an IP address" +
                                          (sockets ? std::string(" or a Unix socket") : "")});
    }
    if (u.resolve_hold.count() > 0 && u.resolve_interval.count() == 0) {
      warnings.push_back({u.location, pool + "resolve_hold has no effect without "
                                             "resolve_interval"});
    }
  }
  for (const ListenerConfig& l : config.listeners) {
    if (l.accept_proxy_protocol && l.proxy_protocol_from.empty() && !loopback(l.listen)) {
      warnings.push_back({l.location, "listener " + l.name +
                                          ": takes PROXY protocol headers from any peer, and a "
                                          "header can claim any client address: set "
                                          "proxy_protocol_from to the load balancers' networks"});
    }
    for (const RouteConfig& r : l.routes) {
      // Terminated here, a route matches the protocol grelay's own handshake chose, which
      // is always one of tls.alpn.
      for (const std::string& p : r.alpn) {
        if (l.tls && std::find(l.tls->alpn.begin(), l.tls->alpn.end(), p) == l.tls->alpn.end()) {
          warnings.push_back({r.location, "listener " + l.name + ": route ALPN '" + p +
                                              "' is not in the listener's tls alpn, so the "
                                              "handshake never chooses it: never matched"});
        }
      }
    }
    for (const MirrorConfig& m : l.mirrors) {
      if (m.resolve_interval.count() > 0 && !m.address.host_name) {
        warnings.push_back(
            {m.location, "listener " + l.name + ", mirror " + m.name +
                             ": resolve_interval has no effect: the address is " +
                             (m.address.isUnix() ? "a Unix socket" : "an IP address")});
      }
      if (m.resolve_hold.count() > 0 && m.resolve_interval.count() == 0) {
        warnings.push_back({m.location, "listener " + l.name + ", mirror " + m.name +
                                            ": resolve_hold has no effect without "
                                            "resolve_interval"});
      }
    }
  }
  return warnings;
}

std::string ConfigError::toString() const {
  return where.file + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) + ": " +
         message;
}

LoadResult loadString(std::string_view text, const std::string& file_name) {
  try {
    return Loader(file_name).load(text);
  } catch (...) {  // only allocation failures can get here
    LoadResult result;
    result.errors.push_back({{file_name, 1, 1}, "cannot load config: out of memory"});
    return result;
  }
}

LoadResult loadFile(const std::string& path) {
  auto fail = [&](int error) {
    LoadResult result;
    result.errors.push_back({{path, 1, 1}, "cannot read config: " + errnoText(error)});
    return result;
  };
  // Blocking open: `grelay -c <(generate-config)` passes a pipe.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return fail(errno);
  std::string text;
  char buffer[16384];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int error = errno;
      ::close(fd);
      return fail(error);
    }
    if (n == 0)
      break;
    text.append(buffer, n);
  }
  ::close(fd);
  return loadString(text, path);
}

std::optional<uint64_t> parseSize(std::string_view text, std::string* error) {
  auto fail = [error](const char* why) -> std::optional<uint64_t> {
    if (error)
      *error = why;
    return std::nullopt;
  };
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"", 1},
      {"B", 1},
      {"KB", 1000},
      {"MB", 1000'000},
      {"GB", 1000'000'000},
      {"TB", 1000'000'000'000},
      {"KiB", kKiB},
      {"MiB", kMiB},
      {"GiB", kGiB},
      {"TiB", kTiB},
  };
  if (!text.empty() && text[0] == '-')
    return fail("negative sizes are not allowed");
  size_t pos = 0;
  uint64_t value = 0;
  int digits = parseDigits(text, pos, value);
  if (digits < 0)
    return fail("too large");
  if (digits == 0)
    return fail("expected a number with an optional unit, e.g. 64KiB or 8MiB");
  if (pos < text.size() && (text[pos] == '.' || text[pos] == ',')) {
    return fail("fractions are not allowed; use a smaller unit (e.g. 1536KiB)");
  }
  if (pos + 1 < text.size() && text[pos] == ' ')
    ++pos;
  std::string_view unit = text.substr(pos);
  for (auto [name, factor] : kUnits) {
    if (unit != name)
      continue;
    if (value > kNoLimit / factor)
      return fail("too large");
    return value * factor;
  }
  return fail("unknown unit (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)");
}

std::optional<Duration> parseDuration(std::string_view text, std::string* error) {
  auto fail = [error](const char* why) -> std::optional<Duration> {
    if (error)
      *error = why;
    return std::nullopt;
  };
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"us", 1}, {"ms", 1000}, {"s", 1000'000}, {"m", 60'000'000}, {"h", 3600'000'000},
  };
  if (!text.empty() && text[0] == '-')
    return fail("negative durations are not allowed");
  if (text.empty())
    return fail("expected a number with a unit, e.g. 5s, 250ms, 1h");
  uint64_t total_us = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    uint64_t value = 0;
    int digits = parseDigits(text, pos, value);
    if (digits < 0)
      return fail("too large");
    if (digits == 0)
      return fail("expected a number with a unit, e.g. 5s, 250ms, 1h");
    if (pos < text.size() && (text[pos] == '.' || text[pos] == ',')) {
      return fail("fractions are not allowed; use a smaller unit (e.g. 1500ms)");
    }
    size_t unit_start = pos;
    while (pos < text.size() && std::isalpha(static_cast<unsigned char>(text[pos])))
      ++pos;
    std::string_view unit = text.substr(unit_start, pos - unit_start);
    if (unit.empty())
      return fail("missing unit (e.g. 5s, 250ms, 1h)");
    auto match = [unit](const auto& u) { return u.first == unit; };
    const auto* found = std::find_if(std::begin(kUnits), std::end(kUnits), match);
    if (found == std::end(kUnits))
      return fail("unknown unit (use us, ms, s, m or h)");
    if (value > kNoLimit / found->second)
      return fail("too large");
    uint64_t part = value * found->second;
    if (total_us > kNoLimit - part)
      return fail("too large");
    total_us += part;
  }
  return Duration(total_us / 1000 + (total_us % 1000 != 0));  // at most ~1.8e16 ms: fits
}

std::optional<Network> parseNetwork(std::string_view text, std::string* error) {
  auto fail = [error](std::string why) -> std::optional<Network> {
    if (error)
      *error = std::move(why);
    return std::nullopt;
  };
  std::string_view host = text;
  std::string_view length;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    length = text.substr(slash + 1);
    if (length.empty())
      return fail("missing prefix length after '/'");
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  Network network;
  network.text = text;
  const std::string literal(host);
  if (literal.find('\0') != std::string::npos) {
    return fail("not an IPv4 or IPv6 address");
  }
  if (inet_pton(AF_INET, literal.c_str(), network.bytes.data()) == 1) {
    network.family = AF_INET;
    network.prefix = 32;
  } else if (inet_pton(AF_INET6, literal.c_str(), network.bytes.data()) == 1) {
    network.family = AF_INET6;
    network.prefix = 128;
  } else {
    return fail("not an IPv4 or IPv6 address (host names are not accepted here)");
  }
  if (!length.empty()) {
    size_t pos = 0;
    uint64_t bits = 0;
    if (length.size() > 3 || parseDigits(length, pos, bits) <= 0 || pos != length.size() ||
        bits > network.prefix) {
      return fail("prefix length " + quoted(length) + " is not in 0.." +
                  std::to_string(network.prefix));
    }
    network.prefix = static_cast<uint32_t>(bits);
  }
  const size_t size = network.family == AF_INET ? 4 : 16;
  for (size_t bit = network.prefix; bit < size * 8; ++bit) {
    if (network.bytes[bit / 8] & (0x80 >> (bit % 8))) {
      return fail("address bits past the /" + std::to_string(network.prefix) + " prefix are set");
    }
  }
  return network;
}

std::vector<Address> resolveAddresses(std::string_view text, std::string* error) {
  auto fail = [error](std::string why) -> std::vector<Address> {
    if (error)
      *error = std::move(why);
    return {};
  };
  if (isUnixAddressText(text)) {
    return fail("a Unix socket can only be an upstream server or a mirror");
  }
  std::string host;
  std::string_view port;
  bool bracketed = !text.empty() && text[0] == '[';
  if (bracketed) {
    size_t close = text.find(']');
    if (close == std::string_view::npos)
      return fail("missing ']' after the IPv6 address");
    host = text.substr(1, close - 1);
    if (close + 1 >= text.size() || text[close + 1] != ':') {
      return fail("missing port (expected [IPV6]:PORT)");
    }
    port = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return fail("missing port (expected HOST:PORT)");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return fail("an IPv6 address must be in brackets, e.g. [::1]:8080");
    }
  }
  if (host.empty())
    return fail("missing host (use 0.0.0.0 or [::] for all addresses)");
  size_t pos = 0;
  uint64_t port_number = 0;
  if (port.empty() || port.size() > 5 || parseDigits(port, pos, port_number) <= 0 ||
      pos != port.size() || port_number < 1 || port_number > 65535) {
    return fail("port " + quoted(port) + " is not in 1..65535");
  }
  auto hostChar = [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '-' || c == '_';
  };
  auto ipv4Char = [](char c) { return isDigit(c) || c == '.'; };
  if (!bracketed && !std::all_of(host.begin(), host.end(), hostChar)) {
    return fail("invalid host name " + quoted(host));
  }
  if (!bracketed && std::all_of(host.begin(), host.end(), ipv4Char)) {
    in_addr unused{};
    if (inet_pton(AF_INET, host.c_str(), &unused) != 1) {
      return fail("invalid IPv4 address " + quoted(host));
    }
  }
  if (bracketed && host.find('\0') != std::string::npos) {
    return fail("invalid IPv6 address " + quoted(host));
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = bracketed ? AF_INET6 : AF_UNSPEC;
  hints.ai_flags = AI_NUMERICSERV | (bracketed ? AI_NUMERICHOST : 0);
  addrinfo* found = nullptr;
  std::string service(port);
  int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    if (bracketed)
      return fail("invalid IPv6 address " + quoted(host));
    return fail("cannot resolve host " + quoted(host) + ": " +
                (rc == EAI_SYSTEM ? errnoText(errno) : gai_strerror(rc)));
  }
  in6_addr literal6{};
  in_addr literal4{};
  const bool hostName = !bracketed && inet_pton(AF_INET, host.c_str(), &literal4) != 1 &&
                        inet_pton(AF_INET6, host.c_str(), &literal6) != 1;
  std::vector<Address> addresses;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_addrlen > sizeof(sockaddr_storage) ||
        (a->ai_family != AF_INET && a->ai_family != AF_INET6)) {
      continue;
    }
    Address address;
    std::memcpy(&address.storage, a->ai_addr, a->ai_addrlen);
    address.length = a->ai_addrlen;
    address.text = text;
    address.host_name = hostName;
    bool seen = std::any_of(addresses.begin(), addresses.end(),
                            [&](const Address& b) { return b.sameEndpoint(address); });
    if (!seen) {
      addresses.push_back(std::move(address));
    }
  }
  freeaddrinfo(found);
  if (addresses.empty()) {
    return fail("cannot resolve host " + quoted(host) + ": no IPv4 or IPv6 address");
  }
  return addresses;
}

std::optional<Address> parseUnixAddress(std::string_view text, std::string* error) {
  auto fail = [error](std::string why) -> std::optional<Address> {
    if (error)
      *error = std::move(why);
    return std::nullopt;
  };
  if (!isUnixAddressText(text)) {
    return fail("not a Unix socket address (unix:PATH or unix:@NAME)");
  }
  std::string_view path = text.substr(5);
  const bool abstract = !path.empty() && path.front() == '@';
  if (abstract) {
    path.remove_prefix(1);
  }
  if (path.empty()) {
    return fail(
        "missing socket path (e.g. unix:/run/app.sock, or unix:@name for the abstract "
        "namespace)");
  }
  if (path.find('\0') != std::string_view::npos) {
    return fail("the socket path has a NUL byte");
  }
  Address a;
  auto* un = reinterpret_cast<sockaddr_un*>(&a.storage);
  // The path and its terminating NUL, or the abstract name after its leading NUL.
  if (path.size() + 1 > sizeof(un->sun_path)) {
    return fail("the socket path is longer than " + std::to_string(sizeof(un->sun_path) - 1) +
                " bytes");
  }
  un->sun_family = AF_UNIX;
  std::memcpy(un->sun_path + (abstract ? 1 : 0), path.data(), path.size());
  a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
  a.text = std::string(text);
  return a;
}

std::optional<Address> parseAddress(std::string_view text, std::string* error) {
  std::vector<Address> addresses = resolveAddresses(text, error);
  if (addresses.empty()) {
    return std::nullopt;
  }
  return std::move(addresses.front());
}

std::string formatSize(uint64_t bytes) {
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"TiB", kTiB}, {"GiB", kGiB}, {"MiB", kMiB}, {"KiB", kKiB}};
  for (auto [unit, factor] : kUnits) {
    if (bytes != 0 && bytes % factor == 0)
      return std::to_string(bytes / factor) + std::string(unit);
  }
  return std::to_string(bytes) + "B";
}

std::string formatDuration(Duration duration) {
  int64_t ms = duration.count();
  if (ms != 0 && ms % 3600'000 == 0)
    return std::to_string(ms / 3600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0)
    return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0)
    return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace grelay::config
