#include "tests/fuzz/tap_checks.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "proxy/tap/format.h"
#include "tests/fuzz/fuzz_util.h"

namespace grelay::fuzz {
namespace {

using namespace grelay::tap;

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

uint16_t be16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] << 8 | p[1]);
}

// Internet checksum over `parts`; 0 when the stored checksum is right.
class Sum {
public:
  void add(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i, odd_ = !odd_) {
      sum_ += odd_ ? p[i] : uint32_t{p[i]} << 8;
    }
  }
  uint16_t fold() const {
    uint64_t s = sum_;
    while (s >> 16) {
      s = (s & 0xffff) + (s >> 16);
    }
    return static_cast<uint16_t>(~s & 0xffff);
  }

private:
  uint64_t sum_ = 0;
  bool odd_ = false;
};

}  // namespace

using namespace grelay::tap;

void checkTapContents(size_t size, const TapContents& contents, const TapDiagnostics& diagnostics) {
  FUZZ_CHECK(diagnostics.items().size() <= TapDiagnostics::kMaxItems, "diagnostics bounded");
  FUZZ_CHECK(diagnostics.items().size() + diagnostics.suppressed() ==
                 diagnostics.errors() + diagnostics.notes(),
             "diagnostics counted");
  for (const TapDiagnostic& d : diagnostics.items()) {
    FUZZ_CHECK(d.offset <= size, "diagnostic offset inside the file: " + d.message);
    FUZZ_CHECK(!d.message.empty(), "diagnostic has a message");
  }
  for (const TapSessionContents& s : contents.sessions) {
    const std::string ctx = "session " + std::to_string(s.sessionId);
    FUZZ_CHECK(s.recordOffset < size, ctx + ": record offset inside the file");
    for (const TapStreamContents& st : s.streams) {
      uint64_t next = 0;
      for (size_t i = 0; i < st.chunks.size(); ++i) {
        const TapChunk& c = st.chunks[i];
        FUZZ_CHECK_KNOWN(c.length > 0, "empty-chunk", ctx + ": empty chunk");
        FUZZ_CHECK(
            c.payloadOffset >= sizeof(FileHeader) + sizeof(ExtentHeader) + sizeof(ChunkHeader) &&
                c.payloadOffset <= size && c.length <= size - c.payloadOffset,
            ctx + ": chunk payload inside the file");
        FUZZ_CHECK(i == 0 || c.streamOffset >= next, ctx + ": chunks ordered, no overlap");
        FUZZ_CHECK_KNOWN(c.streamOffset + c.length > c.streamOffset, "stream-offset-overflow",
                         ctx + ": stream offset overflow");
        next = c.streamOffset + c.length;
      }
      FUZZ_CHECK(st.endOffset() >= next, ctx + ": end at or past the last chunk");
    }
  }
}

// Walks the exporter's output: a pcap whose records are well-formed IP/TCP packets.
void checkPcap(const std::string& pcap, const PcapExportStats& stats, bool emptyChunks) {
  const auto* p = reinterpret_cast<const uint8_t*>(pcap.data());
  const size_t n = pcap.size();
  FUZZ_CHECK(n >= 24, "pcap file header");
  FUZZ_CHECK(load<uint32_t>(p) == 0xa1b23c4d, "pcap nanosecond magic");
  FUZZ_CHECK(load<uint32_t>(p + 20) == 101, "LINKTYPE_RAW");
  const uint32_t snap = load<uint32_t>(p + 16);
  uint64_t packets = 0;
  uint64_t payload = 0;
  size_t off = 24;
  while (off < n) {
    FUZZ_CHECK(n - off >= 16, "record header cut");
    const uint32_t nsec = load<uint32_t>(p + off + 4);
    const uint32_t incl = load<uint32_t>(p + off + 8);
    const uint32_t orig = load<uint32_t>(p + off + 12);
    FUZZ_CHECK(nsec < 1'000'000'000u, "nanoseconds < 1e9");
    FUZZ_CHECK(incl == orig && incl <= snap, "whole packets within the snap length");
    off += 16;
    FUZZ_CHECK(n - off >= incl, "packet cut");
    const uint8_t* ip = p + off;
    FUZZ_CHECK(incl >= 20, "IP header");
    size_t ipLen = 0;
    Sum tcpSum;
    uint8_t pseudo[40] = {};
    if ((ip[0] >> 4) == 4) {
      ipLen = 20;
      FUZZ_CHECK(ip[0] == 0x45 && ip[9] == 6, "IPv4 without options, TCP");
      FUZZ_CHECK(be16(ip + 2) == incl, "IPv4 total length");
      Sum s;
      s.add(ip, 20);
      FUZZ_CHECK(s.fold() == 0, "IPv4 header checksum");
      std::memcpy(pseudo, ip + 12, 8);
      pseudo[9] = 6;
      pseudo[10] = static_cast<uint8_t>((incl - 20) >> 8);
      pseudo[11] = static_cast<uint8_t>(incl - 20);
      tcpSum.add(pseudo, 12);
    } else {
      FUZZ_CHECK((ip[0] >> 4) == 6 && incl >= 40 && ip[6] == 6, "IPv6, TCP");
      ipLen = 40;
      FUZZ_CHECK(be16(ip + 4) + 40u == incl, "IPv6 payload length");
      std::memcpy(pseudo, ip + 8, 32);
      const uint32_t seg = incl - 40;
      pseudo[34] = static_cast<uint8_t>(seg >> 8);
      pseudo[35] = static_cast<uint8_t>(seg);
      pseudo[39] = 6;
      tcpSum.add(pseudo, 40);
    }
    FUZZ_CHECK(incl - ipLen >= 20, "TCP header");
    const uint8_t* tcp = ip + ipLen;
    const size_t tcpLen = (tcp[12] >> 4) * 4u;
    FUZZ_CHECK(tcpLen >= 20 && incl - ipLen >= tcpLen, "TCP data offset");
    tcpSum.add(tcp, incl - ipLen);
    FUZZ_CHECK(tcpSum.fold() == 0, "TCP checksum");
    payload += incl - ipLen - tcpLen;
    ++packets;
    off += incl;
  }
  FUZZ_CHECK(packets == stats.packets, "packet count matches the stats");
  // A zero-length chunk (bugs-hardening.md #2) ends its session's export early.
  if (emptyChunks) {
    FUZZ_CHECK_KNOWN(payload == stats.bytes[0] + stats.bytes[1], "empty-chunk",
                     "payload bytes match the stats");
  } else {
    FUZZ_CHECK(payload == stats.bytes[0] + stats.bytes[1], "payload bytes match the stats");
  }
}

void exportAndCheck(const uint8_t* data, size_t size, const TapContents& contents) {
  std::ostringstream out;
  PcapExportStats stats;
  std::vector<std::string> skipped;
  const std::vector<PcapSource> sources = {{"fuzz", data, size, &contents}};
  FUZZ_CHECK(writePcap(sources, out, &stats, &skipped), "writePcap to memory succeeds");
  FUZZ_CHECK(stats.sessions + stats.skippedSessions == contents.sessions.size(),
             "every session exported or skipped");
  FUZZ_CHECK(skipped.size() == stats.skippedSessions, "every skip described");
  bool emptyChunks = false;
  for (const TapSessionContents& s : contents.sessions) {
    for (const TapStreamContents& st : s.streams) {
      for (const TapChunk& c : st.chunks) {
        emptyChunks |= c.length == 0;
      }
    }
  }
  checkPcap(out.str(), stats, emptyChunks);
}

}  // namespace grelay::fuzz
