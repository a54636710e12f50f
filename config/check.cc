#include "config/check.h"

#include "config/loader.h"

namespace grelay::config {
namespace {

std::string count(size_t n, const char* noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

}  // namespace

int runCheck(const std::string& path, std::ostream& out, std::ostream& err) {
  LoadResult result = loadFile(path);
  for (const ConfigError& error : result.errors)
    err << error.toString() << '\n';
  if (!result.config)
    return 1;
  for (const ConfigError& warning : result.warnings) {
    ConfigError w = warning;
    w.message = "warning: " + w.message;
    err << w.toString() << '\n';
  }
  const Config& config = *result.config;
  size_t mirrors = 0;
  size_t taps = 0;
  size_t routes = 0;
  for (const ListenerConfig& listener : config.listeners) {
    mirrors += listener.mirrors.size();
    taps += listener.tap.has_value();
    routes += listener.routes.size();
  }
  out << path << ": ok (" << count(config.listeners.size(), "listener") << ", "
      << count(config.upstreams.size(), "upstream") << ", " << count(mirrors, "mirror") << ", "
      << count(taps, "tap") << (routes > 0 ? ", " + count(routes, "route") : "") << ")\n";
  return 0;
}

}  // namespace grelay::config
