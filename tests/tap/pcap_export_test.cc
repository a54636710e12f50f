#include "proxy/tap/pcap_export.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <sstream>

#include "tests/tap/synth.h"

namespace grelay::tap {
namespace {

using testing::applyWrites;
using testing::synthesize;
using testing::SynthOptions;
using testing::SynthResult;

uint16_t get16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] << 8 | p[1]);
}
uint32_t get32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

uint32_t sum16(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) {
    sum += get16(p + i);
  }
  if (n % 2) {
    sum += uint32_t{p[n - 1]} << 8;
  }
  return sum;
}

bool checksumOk(uint32_t sum) {
  while (sum >> 16) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return sum == 0xffff;
}

struct Side {
  bool seenSyn = false;
  uint32_t isn = 0;
  std::map<uint64_t, std::vector<uint8_t>> data;  // stream offset -> payload
  std::optional<uint64_t> finOffset;
  bool rst = false;
};

struct Connection {
  bool ipv6 = false;
  Side side[2];  // 0 = client (sent the SYN), 1 = server
};

// A minimal pcap reader that checks what tshark relies on and reassembles by sequence number.
std::map<uint16_t, Connection> readPcap(const std::string& pcap, uint64_t* packets) {
  std::map<uint16_t, Connection> conns;  // by client port
  const auto* p = reinterpret_cast<const uint8_t*>(pcap.data());
  EXPECT_GE(pcap.size(), 24u);
  uint32_t magic;
  uint32_t linktype;
  std::memcpy(&magic, p, 4);
  std::memcpy(&linktype, p + 20, 4);
  EXPECT_EQ(magic, 0xa1b23c4du);
  EXPECT_EQ(linktype, 101u);
  size_t pos = 24;
  uint64_t lastTime = 0;
  *packets = 0;
  while (pos + 16 <= pcap.size()) {
    uint32_t rec[4];
    std::memcpy(rec, p + pos, 16);
    pos += 16;
    EXPECT_EQ(rec[2], rec[3]);
    EXPECT_LE(pos + rec[2], pcap.size());
    EXPECT_LE(rec[2], 65535u + 40);
    const uint64_t t = uint64_t{rec[0]} * 1'000'000'000 + rec[1];
    EXPECT_LT(rec[1], 1'000'000'000u);
    EXPECT_GE(t, lastTime) << "packets out of time order";
    lastTime = t;
    const uint8_t* ip = p + pos;
    const size_t len = rec[2];
    pos += len;
    ++*packets;
    const bool v6 = (ip[0] >> 4) == 6;
    size_t ipLen;
    uint32_t pseudo;
    size_t tcpLen;
    if (v6) {
      ipLen = 40;
      tcpLen = get16(ip + 4);
      EXPECT_EQ(ipLen + tcpLen, len);
      EXPECT_EQ(ip[6], 6);
      pseudo = sum16(ip + 8, 32) + static_cast<uint32_t>(tcpLen) + 6;
    } else {
      EXPECT_EQ(ip[0], 0x45);
      ipLen = 20;
      EXPECT_EQ(get16(ip + 2), len);
      EXPECT_TRUE(checksumOk(sum16(ip, 20))) << "IPv4 header checksum";
      tcpLen = len - 20;
      pseudo = sum16(ip + 12, 8) + static_cast<uint32_t>(tcpLen) + 6;
    }
    const uint8_t* tcp = ip + ipLen;
    EXPECT_TRUE(checksumOk(sum16(tcp, tcpLen, pseudo))) << "TCP checksum";
    const uint16_t sport = get16(tcp);
    const uint16_t dport = get16(tcp + 2);
    const uint32_t seq = get32(tcp + 4);
    const uint8_t flags = tcp[13];
    const size_t off = (tcp[12] >> 4) * 4u;
    const uint8_t* payload = tcp + off;
    const size_t n = tcpLen - off;
    if ((flags & 0x12) == 0x02) {  // SYN
      Connection& c = conns[sport];
      EXPECT_FALSE(c.side[0].seenSyn) << "two SYNs for port " << sport;
      c.ipv6 = v6;
      c.side[0].seenSyn = true;
      c.side[0].isn = seq;
      continue;
    }
    // Client ports (>= 20000) never collide with the listener ports (8080, 8443).
    const bool fromClient = conns.count(sport) > 0;
    Connection& c = conns[fromClient ? sport : dport];
    Side& s = c.side[fromClient ? 0 : 1];
    if ((flags & 0x12) == 0x12) {
      s.seenSyn = true;
      s.isn = seq;
      continue;
    }
    EXPECT_TRUE(s.seenSyn);
    const uint64_t offset = static_cast<uint32_t>(seq - s.isn - 1);
    if (n > 0) {
      s.data[offset].assign(payload, payload + n);
    }
    if (flags & 0x01) {
      s.finOffset = offset + n;
    }
    if (flags & 0x04) {
      s.rst = true;
    }
  }
  EXPECT_EQ(pos, pcap.size());
  return conns;
}

void expectExportMatches(const std::vector<SynthResult>& synths, uint32_t maxSegment) {
  std::vector<std::vector<uint8_t>> images;
  std::vector<TapContents> contents(synths.size());
  std::vector<PcapSource> sources;
  for (size_t i = 0; i < synths.size(); ++i) {
    images.push_back(applyWrites(synths[i].writes));
  }
  for (size_t i = 0; i < synths.size(); ++i) {
    TapDiagnostics diag;
    ASSERT_TRUE(parseTap(images[i].data(), images[i].size(), &contents[i], &diag));
    ASSERT_EQ(diag.errors(), 0u);
    sources.push_back(
        {"file" + std::to_string(i), images[i].data(), images[i].size(), &contents[i]});
  }
  std::ostringstream out;
  PcapExportStats stats;
  std::vector<std::string> skipped;
  PcapOptions options;
  options.maxSegment = maxSegment;
  ASSERT_TRUE(writePcap(sources, out, &stats, &skipped, options));
  EXPECT_TRUE(skipped.empty());
  uint64_t packets = 0;
  const auto conns = readPcap(out.str(), &packets);
  EXPECT_EQ(packets, stats.packets);
  size_t recorded = 0;
  for (const auto& synth : synths) {
    for (const auto& e : synth.sessions) {
      if (!e.recorded) {
        continue;
      }
      ++recorded;
      const auto it = conns.find(e.info.client.port);
      ASSERT_NE(it, conns.end()) << "session " << e.info.sessionId;
      const Connection& c = it->second;
      EXPECT_EQ(c.ipv6, e.info.client.family == 6 && !e.info.client.isV4Mapped());
      bool anyReset = false;
      for (int d = 0; d < 2; ++d) {
        const Side& s = c.side[d];
        const auto& x = e.streams[d];
        uint64_t covered = 0;
        for (const auto& [offset, bytes] : s.data) {
          ASSERT_LE(offset + bytes.size(), x.bytes.size());
          ASSERT_LE(bytes.size(), maxSegment);
          ASSERT_EQ(std::memcmp(bytes.data(), x.bytes.data() + offset, bytes.size()), 0)
              << "session " << e.info.sessionId << " dir " << d << " offset " << offset;
          covered += bytes.size();
        }
        EXPECT_EQ(covered, x.captured().size());
        if (x.end == EndKind::kFin) {
          ASSERT_TRUE(s.finOffset.has_value()) << "session " << e.info.sessionId;
          EXPECT_EQ(*s.finOffset, x.bytes.size());
        } else {
          EXPECT_FALSE(s.finOffset.has_value());
        }
        anyReset |= x.end == EndKind::kReset;
      }
      EXPECT_EQ(c.side[0].rst || c.side[1].rst, anyReset) << "session " << e.info.sessionId;
    }
  }
  EXPECT_EQ(stats.sessions, recorded);
  EXPECT_EQ(conns.size(), recorded);
}

TEST(PcapExport, EveryStreamReassemblesToTheRecordedBytes) {
  SynthOptions o;
  o.seed = 21;
  o.sessions = 30;
  expectExportMatches({synthesize(o)}, 65000);
}

TEST(PcapExport, SmallSegmentsAndGapsStillReassemble) {
  SynthOptions o;
  o.seed = 22;
  o.sessions = 20;
  o.gapPercent = 20;
  o.maxChunk = 5000;
  expectExportMatches({synthesize(o)}, 536);
}

TEST(PcapExport, SeveralFilesMergeByTime) {
  SynthOptions a;
  a.seed = 23;
  a.worker = 0;
  SynthOptions b;
  b.seed = 23;  // same clock range: packets of both files interleave
  b.worker = 1;
  b.firstPort = 30000;
  expectExportMatches({synthesize(a), synthesize(b)}, 65000);
}

TEST(PcapExport, SessionWithoutOpenRecordIsSkippedAndNamed) {
  SynthOptions o;
  o.seed = 24;
  o.sessions = 3;
  const SynthResult synth = synthesize(o);
  std::vector<uint8_t> image = applyWrites(synth.writes);
  for (const auto& w : synth.writes) {
    if (w.session == 0 && w.bytes.size() == sizeof(SessionOpenRecord)) {
      image[w.offset + 20] ^= 1;
      break;
    }
  }
  TapContents contents;
  TapDiagnostics diag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
  std::vector<PcapSource> sources = {{"t.gtap", image.data(), image.size(), &contents}};
  std::ostringstream out;
  PcapExportStats stats;
  std::vector<std::string> skipped;
  ASSERT_TRUE(writePcap(sources, out, &stats, &skipped));
  EXPECT_EQ(stats.sessions, 2u);
  EXPECT_EQ(stats.skippedSessions, 1u);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("session 1000"), std::string::npos) << skipped[0];
}

}  // namespace
}  // namespace grelay::tap
