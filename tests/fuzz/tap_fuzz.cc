// Fuzz target: any bytes as a tap file (proxy/tap/FORMAT.md) must parse and export to pcap
// without crashing or reading out of bounds, and what comes out must be well formed:
//   - parseTap(): every chunk lies inside the input, past the file header; a stream's chunks
//     are ordered by stream offset and do not overlap; at most kMaxItems diagnostics stored;
//   - writePcap(): a valid pcap (nanosecond magic, LINKTYPE_RAW) whose records tile the
//     output; every packet is IPv4 or IPv6 + TCP with lengths that add up and correct IP and
//     TCP checksums; packet count and payload bytes match the exporter's stats.
// Every block and chunk header carries a CRC mixed with the file's salt and its offset, so
// random mutations almost never produce a new valid header. Each input therefore runs twice:
// as is, and with the CRC of every header-looking structure (magic at an 8-byte boundary)
// recomputed, so the fuzzer reaches the reader's and exporter's logic behind the checksums.
//
// Seeds: tap_corpus/ (files from tests/tap/tap_synth and from grelay itself).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "proxy/tap/format.h"
#include "proxy/tap/reader.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/tap_checks.h"

namespace {

using namespace grelay::tap;

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Recomputes the CRC of the file header and of everything at an 8-byte boundary that starts
// with a block or chunk magic, as a writer would have.
void fixChecksums(std::vector<uint8_t>& f) {
  if (f.size() < sizeof(FileHeader) || std::memcmp(f.data(), kFileMagic.data(), 8) != 0) {
    return;
  }
  std::memset(f.data() + offsetof(FileHeader, crc), 0, 4);
  const uint32_t headerCrc = crc32c(f.data(), sizeof(FileHeader));
  std::memcpy(f.data() + offsetof(FileHeader, crc), &headerCrc, 4);
  const uint64_t salt = load<uint64_t>(f.data() + offsetof(FileHeader, salt));
  for (uint64_t off = sizeof(FileHeader); off + 16 <= f.size(); off += kAlign) {
    const uint32_t magic = load<uint32_t>(f.data() + off);
    size_t fixed = 0;
    size_t crcAt = 0;
    if (magic == kBlockMagic) {
      switch (static_cast<BlockType>(load<uint16_t>(f.data() + off + 4))) {
        case BlockType::kExtent:
          fixed = sizeof(ExtentHeader);
          break;
        case BlockType::kSessionOpen:
          fixed = sizeof(SessionOpenRecord);
          break;
        case BlockType::kDirectionEnd:
          fixed = sizeof(DirectionEndRecord);
          break;
        case BlockType::kSessionClose:
          fixed = sizeof(SessionCloseRecord);
          break;
        case BlockType::kGap:
          fixed = sizeof(GapRecord);
          break;
        case BlockType::kFileEnd:
          fixed = sizeof(FileEndRecord);
          break;
      }
      crcAt = offsetof(BlockHeader, crc);
    } else if (magic == kChunkMagic) {
      fixed = sizeof(ChunkHeader);
      crcAt = offsetof(ChunkHeader, crc);
    }
    if (fixed == 0 || off + fixed > f.size()) {
      continue;
    }
    const uint32_t crc = recordCrc(salt, off, f.data() + off, fixed, crcAt);
    std::memcpy(f.data() + off + crcAt, &crc, 4);
  }
}

void run(const uint8_t* data, size_t size) {
  TapContents contents;
  TapDiagnostics diagnostics;
  if (!parseTap(data, size, &contents, &diagnostics)) {
    FUZZ_CHECK(contents.sessions.empty(), "no sessions from an unusable file");
    return;
  }
  grelay::fuzz::checkTapContents(size, contents, diagnostics);
  grelay::fuzz::exportAndCheck(data, size, contents);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Exact-size heap copies: ASan then sees any read past the end.
  std::vector<uint8_t> image(data, data + size);
  run(image.data(), image.size());
  fixChecksums(image);
  if (size > 0 && std::memcmp(image.data(), data, size) != 0) {
    // TAP_FUZZ_SAVE_FIXED=FILE: keep the checksum-fixed image, a tap file `grelay tap export`
    // reads like the fuzzer does (for bug reports).
    if (const char* save = std::getenv("TAP_FUZZ_SAVE_FIXED")) {
      if (FILE* f = std::fopen(save, "wb")) {
        std::fwrite(image.data(), 1, image.size(), f);
        std::fclose(f);
      }
    }
    run(image.data(), image.size());
  }
  return 0;
}
