// Tap contents -> classic pcap (nanosecond timestamps, LINKTYPE_RAW) with synthesized IPv4/IPv6
// and TCP headers, so tshark/Wireshark reassemble every session's two streams byte-exactly.
// The pcap endpoints are the client and the address it connected to (what the client saw).
// FORMAT.md, "Export to pcap", documents the mapping.
#pragma once

#include <array>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "proxy/tap/reader.h"

namespace grelay::tap {

struct PcapSource {
  std::string name;  // for messages (the tap file's path)
  const uint8_t* data = nullptr;
  size_t size = 0;
  const TapContents* contents = nullptr;
};

struct PcapOptions {
  // Largest TCP payload per packet (fits a 64 KiB IPv4 or IPv6 packet). Chunks are split.
  uint32_t maxSegment = 65000;
};

struct PcapExportStats {
  uint64_t sessions = 0;
  uint64_t ipv4Sessions = 0;
  uint64_t ipv6Sessions = 0;
  uint64_t skippedSessions = 0;
  uint64_t packets = 0;
  std::array<uint64_t, 2> bytes{};         // payload bytes exported, by Direction
  std::array<uint64_t, 2> missingBytes{};  // stream bytes not in the tap (gaps, drops, damage)
};

// Writes every exportable session of `sources` as one pcap, packets of all sessions merged by
// time. Sessions that cannot be exported are counted and described in *skipped. Returns false
// if writing to `out` failed.
bool writePcap(const std::vector<PcapSource>& sources, std::ostream& out, PcapExportStats* stats,
               std::vector<std::string>* skipped, const PcapOptions& options = {});

}  // namespace grelay::tap
