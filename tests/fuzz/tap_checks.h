// Properties of parsed tap contents and of exported pcaps, shared by the tap fuzz targets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "proxy/tap/pcap_export.h"
#include "proxy/tap/reader.h"

namespace grelay::fuzz {

// Every chunk inside the input past the file header, a stream's chunks ordered by stream
// offset without overlap, diagnostics bounded and counted.
void checkTapContents(size_t size, const tap::TapContents& contents,
                      const tap::TapDiagnostics& diagnostics);

// A pcap as FORMAT.md promises: nanosecond magic, LINKTYPE_RAW, records tiling the output,
// IPv4/IPv6 + TCP packets with consistent lengths and correct IP and TCP checksums; packet
// count and payload bytes equal to the exporter's stats (`emptyChunks`: the contents hold a
// zero-length chunk, a known bug that truncates the export; see tap_checks.cc).
void checkPcap(const std::string& pcap, const tap::PcapExportStats& stats, bool emptyChunks);

// parseTap() was true: export `contents` to memory and check the pcap.
void exportAndCheck(const uint8_t* data, size_t size, const tap::TapContents& contents);

}  // namespace grelay::fuzz
