// `grelay -c FILE --check`: validate a config file without running it.
#pragma once

#include <ostream>
#include <string>

namespace grelay::config {

// Loads `path`. On errors prints each as "FILE:LINE:COL: message" (one per line, in
// file order) to `err` and returns 1. Otherwise prints each warning (lintConfig) as
// "FILE:LINE:COL: warning: message" to `err`, one summary line to `out`, e.g.
// "grelay.toml: ok (2 listeners, 1 upstream, 3 mirrors, 1 tap)", and returns 0.
int runCheck(const std::string& path, std::ostream& out, std::ostream& err);

}  // namespace grelay::config
