// `grelay tap ...`: tools for tap files.
#pragma once

#include <ostream>

namespace grelay::tap {

// argv[0] is "tap". `grelay tap export --pcap OUT TAP...` (TAP: a .gtap file or a directory
// of them). Exit codes: 0 everything exported, 1 something was skipped (truncated or corrupt
// input, unreadable file; OUT still holds everything valid) or OUT could not be written,
// 2 usage error. Summary on `out`, problems on `err`, each naming the file and offset.
int tapMain(int argc, char** argv, std::ostream& out, std::ostream& err);

}  // namespace grelay::tap
