// Checks that parsed tap contents hold exactly what a synthesized run carried.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>

#include "proxy/tap/reader.h"
#include "tests/tap/synth.h"

namespace grelay::tap::testing {

inline const TapSessionContents* findSession(const TapContents& c, uint64_t id) {
  for (const auto& s : c.sessions) {
    if (s.sessionId == id) {
      return &s;
    }
  }
  return nullptr;
}

// Every recorded session whose writes all lie below `cut` is in `contents` exactly.
inline void expectSessionsMatch(const TapContents& contents, const std::vector<uint8_t>& image,
                                const SynthResult& synth,
                                uint64_t cut = std::numeric_limits<uint64_t>::max()) {
  for (const ExpectedSession& e : synth.sessions) {
    const TapSessionContents* s = findSession(contents, e.info.sessionId);
    if (!e.recorded) {
      EXPECT_EQ(s, nullptr) << "session " << e.info.sessionId << " was refused";
      continue;
    }
    if (e.lastByte > cut) {
      continue;
    }
    ASSERT_NE(s, nullptr) << "session " << e.info.sessionId;
    const std::string where = "session " + std::to_string(e.info.sessionId);
    EXPECT_TRUE(s->hasOpen) << where;
    EXPECT_EQ(s->openTimeNs, e.info.timeNs) << where;
    EXPECT_EQ(s->flags, e.info.flags) << where;
    EXPECT_EQ(s->client, e.info.client) << where;
    EXPECT_EQ(s->local, e.info.local) << where;
    EXPECT_EQ(s->upstream, e.info.upstream) << where;
    EXPECT_EQ(s->close.has_value(), e.closed) << where;
    for (int d = 0; d < 2; ++d) {
      const ExpectedStream& x = e.streams[d];
      const TapStreamContents& st = s->streams[d];
      const std::string w = where + " direction " + std::to_string(d);
      // Chunks and gaps tile [0, total) in order.
      uint64_t pos = 0;
      size_t gi = 0;
      for (const TapChunk& c : st.chunks) {
        while (gi < x.gaps.size() && x.gaps[gi].first == pos) {
          pos += x.gaps[gi++].second;
        }
        ASSERT_EQ(c.streamOffset, pos) << w;
        ASSERT_LE(c.streamOffset + c.length, x.bytes.size()) << w;
        ASSERT_LE(c.payloadOffset + c.length, image.size()) << w;
        ASSERT_EQ(
            std::memcmp(image.data() + c.payloadOffset, x.bytes.data() + c.streamOffset, c.length),
            0)
            << w << " chunk at stream offset " << c.streamOffset;
        pos += c.length;
      }
      while (gi < x.gaps.size() && x.gaps[gi].first == pos) {
        pos += x.gaps[gi++].second;
      }
      EXPECT_EQ(pos, x.bytes.size()) << w;
      EXPECT_EQ(st.endOffset(), x.bytes.size()) << w;
      ASSERT_EQ(st.end.has_value(), x.end.has_value()) << w;
      if (x.end) {
        EXPECT_EQ(st.end->kind, *x.end) << w;
        EXPECT_EQ(st.end->streamBytes, x.bytes.size()) << w;
      }
    }
  }
}

}  // namespace grelay::tap::testing
