// libFuzzer target: any bytes as a tap file must parse and export without crashing or reading
// out of bounds. Built with clang only (tests/tap/CMakeLists.txt); seed it with tap_synth
// output, e.g. `tap_synth --out s --sessions 3 --max-chunk 200 --max-session-bytes 600`.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "proxy/tap/pcap_export.h"
#include "proxy/tap/reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  grelay::tap::TapContents contents;
  grelay::tap::TapDiagnostics diagnostics;
  if (grelay::tap::parseTap(data, size, &contents, &diagnostics)) {
    std::ostringstream out;
    grelay::tap::PcapExportStats stats;
    std::vector<std::string> skipped;
    const std::vector<grelay::tap::PcapSource> sources = {{"fuzz", data, size, &contents}};
    grelay::tap::writePcap(sources, out, &stats, &skipped);
  }
  return 0;
}
