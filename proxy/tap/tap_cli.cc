#include "proxy/tap/tap_cli.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/tap/pcap_export.h"
#include "proxy/tap/reader.h"

namespace grelay::tap {
namespace {

constexpr std::string_view kUsage =
    "usage: grelay tap export --pcap OUT TAP...\n"
    "  Converts tap files to one pcap (nanosecond timestamps, raw IPv4/IPv6) with\n"
    "  synthesized TCP handshakes, sequence numbers and FIN/RST, so Wireshark and tshark\n"
    "  reassemble both directions of every session. TAP is a .gtap file or a directory\n"
    "  (every *.gtap in it). Endpoints are the client and the address it connected to.\n"
    "  Exit: 0 ok, 1 something skipped (OUT still holds everything valid), 2 usage.\n";

std::string hex(uint64_t v) {
  char text[24];
  snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

// Expands directories into their *.gtap files (sorted). Returns false on a missing path.
bool collect(const std::string& arg, std::vector<std::string>* files, std::ostream& err) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(arg, ec);
  if (ec || !fs::exists(st)) {
    err << arg << ": " << (ec ? ec.message() : "no such file or directory") << "\n";
    return false;
  }
  if (!fs::is_directory(st)) {
    files->push_back(arg);
    return true;
  }
  std::vector<std::string> found;
  for (fs::directory_iterator it(arg, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".gtap" && it->is_regular_file(ec)) {
      found.push_back(it->path().string());
    }
  }
  if (ec) {
    err << arg << ": " << ec.message() << "\n";
    return false;
  }
  if (found.empty()) {
    err << arg << ": no .gtap files in this directory\n";
    return false;
  }
  std::sort(found.begin(), found.end());
  files->insert(files->end(), found.begin(), found.end());
  return true;
}

int exportPcap(int argc, char** argv, std::ostream& out, std::ostream& err) {
  std::string output;
  std::vector<std::string> inputs;
  for (int i = 2; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--pcap" || arg == "-o") {
      if (i + 1 >= argc) {
        err << "grelay tap export: --pcap needs a file name\n" << kUsage;
        return 2;
      }
      output = argv[++i];
    } else if (arg.starts_with("--pcap=")) {
      output = std::string(arg.substr(7));
    } else if (arg == "-h" || arg == "--help") {
      out << kUsage;
      return 0;
    } else if (arg.starts_with("-") && arg != "-") {
      err << "grelay tap export: unknown option " << arg << "\n" << kUsage;
      return 2;
    } else {
      inputs.emplace_back(arg);
    }
  }
  if (output.empty() || inputs.empty()) {
    err << "grelay tap export: " << (output.empty() ? "--pcap OUT" : "a TAP file")
        << " is required\n"
        << kUsage;
    return 2;
  }

  bool problems = false;
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    problems |= !collect(in, &files, err);
  }

  struct Loaded {
    std::string name;
    std::unique_ptr<MappedFile> map;
    TapContents contents;
  };
  std::vector<std::unique_ptr<Loaded>> loaded;
  std::vector<PcapSource> sources;
  uint64_t fullFiles = 0;
  uint64_t writerDropped = 0;
  for (const std::string& name : files) {
    std::string error;
    auto map = MappedFile::open(name, &error);
    if (!map) {
      err << name << ": " << error << "; skipped\n";
      problems = true;
      continue;
    }
    auto l = std::make_unique<Loaded>();
    l->name = name;
    l->map = std::move(map);
    TapDiagnostics diag;
    const bool usable = parseTap(l->map->data(), l->map->size(), &l->contents, &diag);
    for (const TapDiagnostic& d : diag.items()) {
      err << name << ": offset " << hex(d.offset) << ": " << (d.error ? "" : "note: ") << d.message
          << "\n";
    }
    if (diag.suppressed() > 0) {
      err << name << ": " << diag.suppressed() << " more problems not shown\n";
    }
    if (!usable) {
      err << name << ": unreadable tap file; skipped\n";
      problems = true;
      continue;
    }
    problems |= diag.errors() > 0;
    if (l->contents.file.full) {
      ++fullFiles;
    }
    writerDropped += l->contents.file.droppedBytes;
    sources.push_back(PcapSource{name, l->map->data(), l->map->size(), &l->contents});
    loaded.push_back(std::move(l));
  }

  const std::string temp = output + ".tmp";
  std::ofstream file(temp, std::ios::binary | std::ios::trunc);
  if (!file) {
    err << output << ": cannot write: " << std::strerror(errno) << "\n";
    return 1;
  }
  PcapExportStats stats;
  std::vector<std::string> skipped;
  const bool written = writePcap(sources, file, &stats, &skipped);
  file.close();
  if (!written || !file) {
    err << output << ": write failed\n";
    std::remove(temp.c_str());
    return 1;
  }
  std::error_code ec;
  std::filesystem::rename(temp, output, ec);
  if (ec) {
    err << output << ": " << ec.message() << "\n";
    std::remove(temp.c_str());
    return 1;
  }
  for (const std::string& s : skipped) {
    err << s << "\n";
  }
  problems |= !skipped.empty();

  out << "exported " << stats.sessions << " sessions (" << stats.ipv4Sessions << " IPv4, "
      << stats.ipv6Sessions << " IPv6) from " << sources.size() << " tap file"
      << (sources.size() == 1 ? "" : "s") << " to " << output << ": " << stats.packets
      << " packets, request " << stats.bytes[0] << " bytes, response " << stats.bytes[1]
      << " bytes\n";
  if (stats.missingBytes[0] + stats.missingBytes[1] > 0) {
    out << "not in the tap (gaps, drops, damage): request " << stats.missingBytes[0]
        << " bytes, response " << stats.missingBytes[1] << " bytes (shown as missing segments)\n";
  }
  if (fullFiles > 0 || writerDropped > 0) {
    out << fullFiles << " tap file" << (fullFiles == 1 ? "" : "s")
        << " reached max_size; the writers dropped " << writerDropped << " bytes\n";
  }
  if (stats.skippedSessions > 0) {
    out << stats.skippedSessions << " sessions skipped\n";
  }
  return problems ? 1 : 0;
}

}  // namespace

int tapMain(int argc, char** argv, std::ostream& out, std::ostream& err) {
  if (argc < 2) {
    err << kUsage;
    return 2;
  }
  const std::string_view command = argv[1];
  if (command == "export") {
    return exportPcap(argc, argv, out, err);
  }
  if (command == "-h" || command == "--help" || command == "help") {
    out << kUsage;
    return 0;
  }
  err << "grelay tap: unknown command " << command << "\n" << kUsage;
  return 2;
}

}  // namespace grelay::tap
