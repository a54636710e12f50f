// grelay's command line (README, "Command line"):
//   grelay -c FILE            run
//   grelay -c FILE --check    validate; errors as FILE:LINE:COL: message; exit 1 on error
//   grelay --features         io_uring features found and the relay path "auto" picks
//   grelay tap export --pcap OUT TAP...
//   grelay --version
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

#include "config/check.h"
#include "config/loader.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/tap/tap_cli.h"
#include "proxy/tls_context.h"
#include "relay/probe.h"

namespace {

const char* kUsage =
    "usage: grelay -c FILE [--check]\n"
    "       grelay --features\n"
    "       grelay tap export --pcap OUT TAP...\n"
    "       grelay --version\n";

int usage(const char* problem) {
  std::cerr << "grelay: " << problem << "\n" << kUsage;
  return grelay::proxy::kExitConfig;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace grelay;
  // GRELAY_LOG=debug|info|warn|error (default info).
  if (const char* level = std::getenv("GRELAY_LOG"); level != nullptr) {
    const std::string l = level;
    proxy::setLogLevel(l == "debug"   ? proxy::LogLevel::Debug
                       : l == "warn"  ? proxy::LogLevel::Warn
                       : l == "error" ? proxy::LogLevel::Error
                                      : proxy::LogLevel::Info);
  }
  if (argc >= 2 && std::strcmp(argv[1], "tap") == 0) {
    return tap::tapMain(argc - 1, argv + 1, std::cout, std::cerr);
  }
  std::string configPath;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strcmp(a, "--version") == 0 || std::strcmp(a, "-V") == 0) {
      std::cout << "grelay " << GRELAY_VERSION << "\n";
      return 0;
    }
    if (std::strcmp(a, "--help") == 0 || std::strcmp(a, "-h") == 0) {
      std::cout << kUsage;
      return 0;
    }
    if (std::strcmp(a, "--features") == 0) {
      relay::Features features = relay::probeFeatures();
      relay::printFeatures(features, std::cout);
      return features.uringAvailable ? 0 : proxy::kExitNoUring;
    }
    if (std::strcmp(a, "-c") == 0 || std::strcmp(a, "--config") == 0) {
      if (i + 1 >= argc) {
        return usage("-c needs a file");
      }
      configPath = argv[++i];
      continue;
    }
    if (std::strcmp(a, "--check") == 0) {
      check = true;
      continue;
    }
    return usage((std::string("unknown argument '") + a + "'").c_str());
  }
  if (configPath.empty()) {
    return usage("no configuration: use -c FILE");
  }
  if (check) {
    // The config loader checks syntax and values; certificates, keys and cipher strings
    // are checked by building the TLS contexts the run would build.
    std::ostringstream summary;
    int rc = config::runCheck(configPath, summary, std::cerr);
    if (rc != 0) {
      return rc;
    }
    config::LoadResult loaded = config::loadFile(configPath);
    proxy::TlsContexts tls;
    std::vector<std::string> errors;
    std::vector<std::string> warnings;
    const bool built = !loaded.config || tls.build(*loaded.config, false, &errors, &warnings);
    for (const auto& w : warnings) {
      std::cerr << w << "\n";
    }
    if (!built) {
      for (const auto& e : errors) {
        std::cerr << e << "\n";
      }
      return proxy::kExitConfig;
    }
    std::cout << summary.str();
    return 0;
  }
  config::LoadResult loaded = config::loadFile(configPath);
  if (!loaded.config) {
    for (const auto& e : loaded.errors) {
      std::cerr << e.toString() << "\n";
    }
    return proxy::kExitConfig;
  }
  for (const auto& w : loaded.warnings) {
    GRELAY_LOG_WARN("%s", w.toString().c_str());
  }
  return proxy::runServer(std::move(*loaded.config), relay::probeFeatures());
}
