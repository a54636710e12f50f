// tap_synth: writes tap files from random sessions through TapLayout, with real pwrite()s in a
// shuffled order (like io_uring completing WRITEs in any order), plus a manifest of what every
// session carried, for tests that check the export with tshark.
//
//   tap_synth --out DIR [--seed N] [--sessions N] [--files N] [--gap-percent P]
//             [--max-size BYTES] [--max-chunk BYTES] [--max-session-bytes BYTES] [--no-finish]
//
// DIR/manifest.json lists files and sessions; DIR/expected/<id>-<dir>.bin hold the bytes each
// direction should show in a reassembled stream (everything carried minus recorded gaps).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>

#include "tests/tap/synth.h"

namespace {

using grelay::tap::EndKind;
using grelay::tap::tapFileName;
using namespace grelay::tap::testing;

int usage() {
  std::cerr << "usage: tap_synth --out DIR [--seed N] [--sessions N] [--files N] "
               "[--gap-percent P] [--max-size BYTES] [--max-chunk BYTES] "
               "[--max-session-bytes BYTES] [--no-finish]\n";
  return 2;
}

bool writeFile(const std::string& path, const SynthResult& synth, uint64_t seed) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror(path.c_str());
    return false;
  }
  std::vector<const WriteOp*> order;
  for (const auto& w : synth.writes) {
    order.push_back(&w);
  }
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  for (const WriteOp* w : order) {
    size_t done = 0;
    while (done < w->bytes.size()) {
      const ssize_t n = pwrite(fd, w->bytes.data() + done, w->bytes.size() - done,
                               static_cast<off_t>(w->offset + done));
      if (n <= 0) {
        std::perror("pwrite");
        ::close(fd);
        return false;
      }
      done += static_cast<size_t>(n);
    }
  }
  return ::close(fd) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out;
  SynthOptions base;
  base.sessions = 12;
  uint32_t files = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--out") {
      out = value();
    } else if (a == "--seed") {
      base.seed = std::stoull(value());
    } else if (a == "--sessions") {
      base.sessions = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--files") {
      files = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--gap-percent") {
      base.gapPercent = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--max-size") {
      base.layout.maxSize = std::stoull(value());
    } else if (a == "--max-chunk") {
      base.maxChunk = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--max-session-bytes") {
      base.maxSessionBytes = static_cast<uint32_t>(std::stoul(value()));
    } else if (a == "--no-finish") {
      base.finish = false;
    } else {
      return usage();
    }
  }
  if (out.empty() || files == 0) {
    return usage();
  }
  std::filesystem::create_directories(out + "/expected");
  std::ofstream manifest(out + "/manifest.json");
  manifest << "{\"files\": [";
  std::string sessionsJson;
  for (uint32_t f = 0; f < files; ++f) {
    SynthOptions o = base;
    o.seed = base.seed * 1000 + f;
    o.worker = f;
    o.firstPort = 20000 + f * 1000;
    const SynthResult synth = synthesize(o);
    const std::string path = out + "/" +
                             tapFileName(synth.identity.listener, o.worker,
                                         synth.identity.createdNs, synth.identity.pid);
    if (!writeFile(path, synth, o.seed)) {
      return 1;
    }
    manifest << (f ? ", " : "") << "{\"path\": \"" << path << "\", \"size\": " << synth.fileSize
             << "}";
    for (const ExpectedSession& e : synth.sessions) {
      std::string s =
          "{\"file\": \"" + path + "\", \"session_id\": " + std::to_string(e.info.sessionId) +
          ", \"client_port\": " + std::to_string(e.info.client.port) +
          ", \"family\": " + std::to_string(e.info.client.isV4Mapped() ? 4 : e.info.client.family) +
          ", \"recorded\": " + (e.recorded ? "true" : "false") +
          ", \"last_byte\": " + std::to_string(e.lastByte) + ", \"directions\": [";
      for (int d = 0; d < 2; ++d) {
        const ExpectedStream& x = e.streams[d];
        const std::string bin = "expected/" + std::to_string(e.info.sessionId) + "-" +
                                std::to_string(f) + "-" + std::to_string(d) + ".bin";
        const auto captured = x.captured();
        std::ofstream(out + "/" + bin, std::ios::binary)
            .write(reinterpret_cast<const char*>(captured.data()),
                   static_cast<std::streamsize>(captured.size()));
        std::string gaps;
        for (const auto& [offset, length] : x.gaps) {
          gaps += (gaps.empty() ? "[" : ", [") + std::to_string(offset) + ", " +
                  std::to_string(length) + "]";
        }
        s += std::string(d ? ", " : "") + "{\"expected\": \"" + out + "/" + bin +
             "\", \"total\": " + std::to_string(x.bytes.size()) + ", \"gaps\": [" + gaps +
             "], \"end\": " +
             (x.end ? (*x.end == EndKind::kFin ? "\"fin\"" : "\"reset\"") : "null") + "}";
      }
      s += "]}";
      sessionsJson += (sessionsJson.empty() ? "" : ",\n  ") + s;
    }
  }
  manifest << "],\n \"sessions\": [\n  " << sessionsJson << "\n]}\n";
  return manifest ? 0 : 1;
}
