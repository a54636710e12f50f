#include "proxy/tap/pcap_export.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <queue>

namespace grelay::tap {
namespace {

constexpr uint32_t kPcapMagicNs = 0xa1b23c4d;
constexpr uint32_t kLinkTypeRaw = 101;
constexpr uint32_t kSnapLen = 262144;
constexpr uint8_t kFin = 0x01;
constexpr uint8_t kSyn = 0x02;
constexpr uint8_t kRst = 0x04;
constexpr uint8_t kPsh = 0x08;
constexpr uint8_t kAck = 0x10;
constexpr uint8_t kWindowShift = 7;
constexpr size_t kClient = 0;  // side index == the Direction it sends
constexpr size_t kServer = 1;

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Internet checksum accumulator (RFC 1071), fed in arbitrary pieces.
class Checksum {
public:
  void add(const uint8_t* p, size_t n) {
    size_t i = 0;
    if (odd_ && n > 0) {
      sum_ += p[0];
      odd_ = false;
      i = 1;
    }
    for (; i + 1 < n; i += 2) {
      sum_ += (uint32_t{p[i]} << 8) | p[i + 1];
    }
    if (i < n) {
      sum_ += uint32_t{p[i]} << 8;
      odd_ = true;
    }
  }
  uint16_t finish() const {
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

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

void put32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

struct Packet {
  uint64_t timeNs = 0;
  size_t side = kClient;
  uint8_t flags = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;
  const uint8_t* payload = nullptr;
  uint32_t length = 0;
};

struct Endpoints {
  bool ipv6 = false;
  std::array<uint8_t, 16> addr[2]{};  // by side
  uint16_t port[2] = {0, 0};
};

bool endpointsFor(const TapSessionContents& s, Endpoints* e) {
  if (!s.client.known() || !s.local.known()) {
    return false;
  }
  const TapAddress* sides[2] = {&s.client, &s.local};
  auto v4 = [](const TapAddress& a) { return a.family == 4 || a.isV4Mapped(); };
  e->ipv6 = !(v4(s.client) && v4(s.local));
  for (size_t i = 0; i < 2; ++i) {
    const TapAddress& a = *sides[i];
    e->port[i] = a.port;
    e->addr[i].fill(0);
    if (!e->ipv6) {
      std::memcpy(e->addr[i].data(), a.family == 4 ? &a.addr[0] : &a.addr[12], 4);
    } else if (a.family == 4) {  // IPv4 peer of an IPv6 endpoint: v4-mapped
      e->addr[i][10] = 0xff;
      e->addr[i][11] = 0xff;
      std::memcpy(&e->addr[i][12], a.addr.data(), 4);
    } else {
      e->addr[i] = a.addr;
    }
  }
  return true;
}

// Produces one session's packets in order: handshake, data of both directions merged by
// time, FIN per direction, RST at the end.
class SessionPackets {
public:
  SessionPackets(const TapSessionContents& s, const uint8_t* data, uint64_t salt,
                 uint32_t maxSegment)
      : s_(s), data_(data), maxSegment_(maxSegment) {
    for (size_t d = 0; d < 2; ++d) {
      isn_[d] = static_cast<uint32_t>(mix(salt ^ mix(s.sessionId * 2 + d)));
      finalOffset_[d] = s.streams[d].endOffset();
      lastChunkTime_[d] = 0;
      for (const TapChunk& c : s.streams[d].chunks) {
        lastChunkTime_[d] = std::max(lastChunkTime_[d], c.timeNs);
      }
    }
    time_ = s.openTimeNs;
    queueHandshake();
  }

  // Next packet, or false when the session is done.
  bool next(Packet* p) {
    // A step may produce no packet (e.g. an empty chunk): go on until one is queued or
    // the session is done.
    while (queue_.empty() && !done_) {
      produce();
    }
    if (queue_.empty()) {
      return false;
    }
    *p = queue_.front();
    queue_.pop_front();
    return true;
  }

private:
  uint32_t seqOf(size_t side, uint64_t offset) const {
    return isn_[side] + 1 + static_cast<uint32_t>(offset);
  }
  // Sequence number of the side's next byte (a FIN takes one).
  uint32_t nextSeq(size_t side) const {
    return seqOf(side, sent_[side]) + (finSent_[side] ? 1 : 0);
  }
  uint32_t ackFrom(size_t side) const { return nextSeq(1 - side); }
  void push(uint64_t t, size_t side, uint8_t flags, uint32_t seq, const uint8_t* payload = nullptr,
            uint32_t length = 0) {
    time_ = std::max(time_, t);  // keep the session's packets in order
    Packet p;
    p.timeNs = time_;
    p.side = side;
    p.flags = flags;
    p.seq = seq;
    p.ack = (flags & kAck) ? ackFrom(side) : 0;
    p.payload = payload;
    p.length = length;
    queue_.push_back(p);
  }

  void queueHandshake() {
    const uint64_t t = s_.openTimeNs;
    push(t, kClient, kSyn, isn_[kClient]);
    push(t, kServer, kSyn | kAck, isn_[kServer]);  // acks isn + 1: nothing sent yet
    push(t, kClient, kAck, nextSeq(kClient));
  }

  uint64_t finTime(size_t d) const {
    return std::max(s_.streams[d].end->timeNs, lastChunkTime_[d]);
  }

  void emitChunk(size_t d, const TapChunk& c) {
    const bool afterGap = c.streamOffset > sent_[d];
    uint32_t done = 0;
    while (done < c.length) {
      const uint32_t n = std::min(maxSegment_, c.length - done);
      const bool last = done + n == c.length;
      push(c.timeNs, d, kAck | (last ? kPsh : 0), seqOf(d, c.streamOffset + done),
           data_ + c.payloadOffset + done, n);
      done += n;
    }
    sent_[d] = c.streamOffset + c.length;
    if (afterGap) {
      // The receiver acknowledges past the hole: tshark then treats the missing bytes as
      // "not captured" and delivers the data after them.
      push(c.timeNs, 1 - d, kAck, nextSeq(1 - d));
    }
  }

  void produce() {
    if (done_) {
      return;
    }
    // Head of each direction: its next chunk, then its FIN.
    int pick = -1;
    uint64_t pickTime = 0;
    for (size_t d = 0; d < 2; ++d) {
      const TapStreamContents& st = s_.streams[d];
      uint64_t t;
      if (next_[d] < st.chunks.size()) {
        t = st.chunks[next_[d]].timeNs;
      } else if (st.end && st.end->kind == EndKind::kFin && !finSent_[d]) {
        t = finTime(d);
      } else {
        continue;
      }
      if (pick < 0 || t < pickTime) {
        pick = static_cast<int>(d);
        pickTime = t;
      }
    }
    if (pick >= 0) {
      const size_t d = static_cast<size_t>(pick);
      const TapStreamContents& st = s_.streams[d];
      if (next_[d] < st.chunks.size()) {
        emitChunk(d, st.chunks[next_[d]++]);
      } else {
        sent_[d] = std::max(sent_[d], finalOffset_[d]);
        push(pickTime, d, kFin | kAck, nextSeq(d));
        finSent_[d] = true;
        push(pickTime, 1 - d, kAck, nextSeq(1 - d));
      }
      return;
    }
    // Data and FINs done: a reset ends the connection (the side whose direction was reset
    // first sends it).
    done_ = true;
    int resetSide = -1;
    uint64_t resetTime = 0;
    for (size_t d = 0; d < 2; ++d) {
      const auto& end = s_.streams[d].end;
      if (end && end->kind == EndKind::kReset && (resetSide < 0 || end->timeNs < resetTime)) {
        resetSide = static_cast<int>(d);
        resetTime = end->timeNs;
      }
    }
    if (resetSide >= 0) {
      const size_t d = static_cast<size_t>(resetSide);
      sent_[d] = std::max(sent_[d], finalOffset_[d]);
      push(resetTime, d, kRst | kAck, nextSeq(d));
    }
  }

  const TapSessionContents& s_;
  const uint8_t* data_;
  uint32_t maxSegment_;
  uint32_t isn_[2];
  uint64_t finalOffset_[2];
  uint64_t lastChunkTime_[2];
  uint64_t sent_[2] = {0, 0};  // stream offset after the last byte sent, by side
  bool finSent_[2] = {false, false};
  size_t next_[2] = {0, 0};
  uint64_t time_ = 0;
  bool done_ = false;
  std::deque<Packet> queue_;
};

class PcapWriter {
public:
  explicit PcapWriter(std::ostream& out) : out_(out) {}

  void fileHeader() {
    uint8_t h[24];
    std::memcpy(h + 0, &kPcapMagicNs, 4);
    const uint16_t major = 2;
    const uint16_t minor = 4;
    const uint32_t zero = 0;
    std::memcpy(h + 4, &major, 2);
    std::memcpy(h + 6, &minor, 2);
    std::memcpy(h + 8, &zero, 4);
    std::memcpy(h + 12, &zero, 4);
    std::memcpy(h + 16, &kSnapLen, 4);
    std::memcpy(h + 20, &kLinkTypeRaw, 4);
    out_.write(reinterpret_cast<const char*>(h), sizeof(h));
  }

  void packet(const Endpoints& e, const Packet& p, uint16_t ipId) {
    const bool syn = (p.flags & kSyn) != 0;
    const size_t tcpLen = syn ? 28 : 20;
    const size_t ipLen = e.ipv6 ? 40 : 20;
    uint8_t h[40 + 28] = {};
    uint8_t* ip = h;
    uint8_t* tcp = h + ipLen;
    const size_t src = p.side;
    const size_t dst = 1 - p.side;
    const uint32_t segment = static_cast<uint32_t>(tcpLen) + p.length;

    // TCP header.
    put16(tcp + 0, e.port[src]);
    put16(tcp + 2, e.port[dst]);
    put32(tcp + 4, p.seq);
    put32(tcp + 8, p.ack);
    tcp[12] = static_cast<uint8_t>((tcpLen / 4) << 4);
    tcp[13] = p.flags;
    put16(tcp + 14, 0xffff);  // window (scaled by 2^7 after the handshake)
    if (syn) {
      tcp[20] = 2;  // MSS
      tcp[21] = 4;
      put16(tcp + 22, 65495);
      tcp[24] = 1;  // NOP
      tcp[25] = 3;  // window scale
      tcp[26] = 3;
      tcp[27] = kWindowShift;
    }
    Checksum sum;
    uint8_t pseudo[40] = {};
    size_t pseudoLen;
    if (e.ipv6) {
      std::memcpy(pseudo, e.addr[src].data(), 16);
      std::memcpy(pseudo + 16, e.addr[dst].data(), 16);
      put32(pseudo + 32, segment);
      pseudo[39] = 6;
      pseudoLen = 40;
    } else {
      std::memcpy(pseudo, e.addr[src].data(), 4);
      std::memcpy(pseudo + 4, e.addr[dst].data(), 4);
      pseudo[9] = 6;
      put16(pseudo + 10, static_cast<uint16_t>(segment));
      pseudoLen = 12;
    }
    sum.add(pseudo, pseudoLen);
    sum.add(tcp, tcpLen);
    if (p.length > 0) {
      sum.add(p.payload, p.length);
    }
    put16(tcp + 16, sum.finish());

    // IP header.
    if (e.ipv6) {
      ip[0] = 0x60;
      put16(ip + 4, static_cast<uint16_t>(segment));
      ip[6] = 6;
      ip[7] = 64;
      std::memcpy(ip + 8, e.addr[src].data(), 16);
      std::memcpy(ip + 24, e.addr[dst].data(), 16);
    } else {
      ip[0] = 0x45;
      put16(ip + 2, static_cast<uint16_t>(20 + segment));
      put16(ip + 4, ipId);
      put16(ip + 6, 0x4000);  // DF
      ip[8] = 64;
      ip[9] = 6;
      std::memcpy(ip + 12, e.addr[src].data(), 4);
      std::memcpy(ip + 16, e.addr[dst].data(), 4);
      Checksum ipSum;
      ipSum.add(ip, 20);
      put16(ip + 10, ipSum.finish());
    }

    const uint32_t total = static_cast<uint32_t>(ipLen) + segment;
    uint32_t rec[4] = {static_cast<uint32_t>(p.timeNs / 1'000'000'000),
                       static_cast<uint32_t>(p.timeNs % 1'000'000'000), total, total};
    out_.write(reinterpret_cast<const char*>(rec), sizeof(rec));
    out_.write(reinterpret_cast<const char*>(h), static_cast<std::streamsize>(ipLen + tcpLen));
    if (p.length > 0) {
      out_.write(reinterpret_cast<const char*>(p.payload), p.length);
    }
  }

private:
  std::ostream& out_;
};

struct Active {
  Endpoints endpoints;
  std::unique_ptr<SessionPackets> packets;
  Packet head;
  uint16_t ipId[2] = {0, 0};
  size_t order = 0;
};

}  // namespace

bool writePcap(const std::vector<PcapSource>& sources, std::ostream& out, PcapExportStats* stats,
               std::vector<std::string>* skipped, const PcapOptions& options) {
  const uint32_t maxSegment = std::clamp<uint32_t>(options.maxSegment, 1, 65495);
  std::vector<Active> active;
  for (size_t f = 0; f < sources.size(); ++f) {
    const PcapSource& src = sources[f];
    if (src.contents == nullptr) {
      continue;
    }
    for (const TapSessionContents& s : src.contents->sessions) {
      Endpoints e;
      if (!s.hasOpen || !endpointsFor(s, &e)) {
        ++stats->skippedSessions;
        skipped->push_back(
            src.name + ": session " + std::to_string(s.sessionId) + ": " +
            (s.hasOpen ? "client or local address unknown" : "no open record (addresses unknown)") +
            "; not exported");
        continue;
      }
      ++stats->sessions;
      ++(e.ipv6 ? stats->ipv6Sessions : stats->ipv4Sessions);
      for (size_t d = 0; d < 2; ++d) {
        const uint64_t recorded = s.streams[d].recordedBytes();
        stats->bytes[d] += recorded;
        stats->missingBytes[d] +=
            s.streams[d].endOffset() - std::min(recorded, s.streams[d].endOffset());
      }
      Active a;
      a.endpoints = e;
      const uint64_t seed = src.contents->file.salt ^ mix(f);
      a.packets = std::make_unique<SessionPackets>(s, src.data, seed, maxSegment);
      a.ipId[0] = static_cast<uint16_t>(mix(seed ^ s.sessionId));
      a.ipId[1] = static_cast<uint16_t>(mix(seed ^ ~s.sessionId));
      a.order = active.size();
      if (a.packets->next(&a.head)) {
        active.push_back(std::move(a));
      }
    }
  }

  // Merge all sessions by packet time (ties: session order) with a min-heap.
  auto later = [&active](size_t x, size_t y) {
    const Active& a = active[x];
    const Active& b = active[y];
    if (a.head.timeNs != b.head.timeNs) {
      return a.head.timeNs > b.head.timeNs;
    }
    return a.order > b.order;
  };
  std::priority_queue<size_t, std::vector<size_t>, decltype(later)> heap(later);
  for (size_t i = 0; i < active.size(); ++i) {
    heap.push(i);
  }
  PcapWriter writer(out);
  writer.fileHeader();
  while (!heap.empty()) {
    const size_t i = heap.top();
    heap.pop();
    Active& a = active[i];
    writer.packet(a.endpoints, a.head, a.ipId[a.head.side]++);
    ++stats->packets;
    if (a.packets->next(&a.head)) {
      heap.push(i);
    } else {
      a.packets.reset();
    }
  }
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace grelay::tap
