#include "proxy/tap/reader.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>

#include "proxy/tap/format.h"
#include "tests/tap/synth.h"
#include "tests/tap/tap_expect.h"

namespace grelay::tap {
namespace {

using testing::applyWrites;
using testing::expectSessionsMatch;
using testing::synthesize;
using testing::SynthOptions;
using testing::SynthResult;

std::string describe(const TapDiagnostics& d) {
  std::string s;
  for (const auto& item : d.items()) {
    s += (item.error ? "error @" : "note @") + std::to_string(item.offset) + ": " + item.message +
         "\n";
  }
  return s;
}

SynthOptions small(uint64_t seed) {
  SynthOptions o;
  o.seed = seed;
  o.sessions = 5;
  o.maxChunk = 700;
  o.maxSessionBytes = 2500;
  o.gapPercent = 10;
  o.parallel = 3;
  return o;
}

TEST(TapReader, RoundTripOfRandomSessionsEqualsWhatWasWritten) {
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    SynthOptions o;
    o.seed = seed;
    o.sessions = 25;
    o.gapPercent = seed % 3 == 0 ? 15 : 0;
    o.maxChunk = seed % 2 ? 150000 : 3000;
    SynthResult synth = synthesize(o);
    // The order of writes does not matter (io_uring completes them in any order).
    std::mt19937_64 rng(seed);
    std::shuffle(synth.writes.begin(), synth.writes.end(), rng);
    const std::vector<uint8_t> image = applyWrites(synth.writes);
    ASSERT_EQ(image.size(), synth.fileSize);
    TapContents contents;
    TapDiagnostics diag;
    ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
    EXPECT_EQ(diag.errors(), 0u) << "seed " << seed << "\n" << describe(diag);
    EXPECT_EQ(diag.notes(), 0u) << describe(diag);
    EXPECT_TRUE(contents.file.finished);
    EXPECT_EQ(contents.file.listener, "web");
    EXPECT_EQ(contents.file.sessionsDeclared, o.sessions);
    EXPECT_EQ(contents.sessions.size(), o.sessions);
    expectSessionsMatch(contents, image, synth);
  }
}

TEST(TapReader, FullFileKeepsEveryRecordedSessionAndSaysSo) {
  SynthOptions o;
  o.seed = 99;
  o.sessions = 40;
  o.layout.maxSize = 300'000;
  SynthResult synth = synthesize(o);
  const std::vector<uint8_t> image = applyWrites(synth.writes);
  EXPECT_LE(image.size(), o.layout.maxSize);
  TapContents contents;
  TapDiagnostics diag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
  EXPECT_EQ(diag.errors(), 0u) << describe(diag);
  EXPECT_TRUE(contents.file.full);
  EXPECT_GT(contents.file.droppedBytes, 0u);
  size_t refused = 0;
  for (const auto& s : synth.sessions) {
    refused += s.recorded ? 0 : 1;
  }
  EXPECT_GT(refused, 0u);
  expectSessionsMatch(contents, image, synth);
}

// Truncation at every write boundary and at every byte: the parser reports it, keeps every
// session that lies wholly before the cut, and never reads out of bounds (ASan build).
TEST(TapReader, TruncatedFilesKeepTheValidPrefix) {
  const SynthResult synth = synthesize(small(3));
  const std::vector<uint8_t> image = applyWrites(synth.writes);
  ASSERT_GT(image.size(), 2000u);
  // Around every write (record and payload boundaries) plus a stride through everything.
  std::set<uint64_t> cuts;
  for (const auto& w : synth.writes) {
    for (uint64_t edge : {w.offset, w.offset + w.bytes.size()}) {
      for (int64_t delta : {-9, -8, -1, 0, 1, 4, 8, 12, 16, 31, 32, 33}) {
        const int64_t c = static_cast<int64_t>(edge) + delta;
        if (c >= 0 && static_cast<uint64_t>(c) < image.size()) {
          cuts.insert(static_cast<uint64_t>(c));
        }
      }
    }
  }
  for (uint64_t c = 0; c < image.size(); c += 61) {
    cuts.insert(c);
  }
  for (uint64_t cut : cuts) {
    // A fresh copy of exactly `cut` bytes so ASan catches any read past the end.
    std::vector<uint8_t> prefix(image.begin(), image.begin() + static_cast<std::ptrdiff_t>(cut));
    TapContents contents;
    TapDiagnostics diag;
    const bool ok = parseTap(prefix.data(), prefix.size(), &contents, &diag);
    ASSERT_EQ(ok, cut >= sizeof(FileHeader)) << cut;
    ASSERT_GE(diag.errors(), 1u) << "cut at " << cut << " went unnoticed";
    if (ok) {
      expectSessionsMatch(contents, prefix, synth, cut);
      if (::testing::Test::HasFailure()) {
        FAIL() << "cut at " << cut << "\n" << describe(diag);
      }
    }
  }
}

TEST(TapReader, CorruptBlockIsReportedAndLaterBlocksAreStillRead) {
  const SynthResult synth = synthesize(small(4));
  std::vector<uint8_t> image = applyWrites(synth.writes);
  // Damage the open record of the second session.
  const uint64_t id = synth.sessions[1].info.sessionId;
  uint64_t openAt = 0;
  for (const auto& w : synth.writes) {
    BlockHeader bh;
    if (w.session == 1 && w.bytes.size() == sizeof(SessionOpenRecord)) {
      std::memcpy(&bh, w.bytes.data(), sizeof(bh));
      if (bh.type == static_cast<uint16_t>(BlockType::kSessionOpen)) {
        openAt = w.offset;
      }
    }
  }
  ASSERT_NE(openAt, 0u);
  image[openAt + 40] ^= 0x55;  // inside the record: checksum mismatch
  TapContents contents;
  TapDiagnostics diag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
  EXPECT_GE(diag.errors(), 1u);
  EXPECT_NE(describe(diag).find("checksum"), std::string::npos) << describe(diag);
  const TapSessionContents* damaged = testing::findSession(contents, id);
  ASSERT_NE(damaged, nullptr);  // its chunks were read, but it has no open record
  EXPECT_FALSE(damaged->hasOpen);
  // Everything else is intact.
  SynthResult others = synth;
  others.sessions.erase(others.sessions.begin() + 1);
  expectSessionsMatch(contents, image, others);
}

TEST(TapReader, CorruptBlockMagicAndSizeAreSkippedToTheNextBlock) {
  for (int field = 0; field < 2; ++field) {
    const SynthResult synth = synthesize(small(5));
    std::vector<uint8_t> image = applyWrites(synth.writes);
    // The first extent header of session 0.
    uint64_t at = 0;
    for (const auto& w : synth.writes) {
      BlockHeader bh;
      std::memcpy(&bh, w.bytes.data(), std::min(w.bytes.size(), sizeof(bh)));
      if (w.session == 0 && w.bytes.size() == sizeof(ExtentHeader) && bh.magic == kBlockMagic &&
          bh.type == static_cast<uint16_t>(BlockType::kExtent)) {
        at = w.offset;
        break;
      }
    }
    ASSERT_NE(at, 0u);
    if (field == 0) {
      image[at] = 'X';  // magic
    } else {
      image[at + 8] = 3;  // size: not a multiple of 8
    }
    TapContents contents;
    TapDiagnostics diag;
    ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
    EXPECT_GE(diag.errors(), 1u);
    const std::string text = describe(diag);
    EXPECT_NE(text.find(field == 0 ? "bad block magic" : "impossible block size"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("skipped up to the next valid block"), std::string::npos) << text;
    SynthResult others = synth;
    others.sessions.erase(others.sessions.begin());
    expectSessionsMatch(contents, image, others);
  }
}

TEST(TapReader, MissingChunkHeaderLosesOnlyThatChunk) {
  SynthOptions o = small(6);
  o.gapPercent = 0;
  const SynthResult synth = synthesize(o);
  std::vector<uint8_t> image = applyWrites(synth.writes);
  // Find a chunk header that is followed by another chunk in the same extent, zero it.
  TapContents before;
  TapDiagnostics d0;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &before, &d0));
  const TapChunk* victim = nullptr;
  const TapSessionContents* owner = nullptr;
  for (const auto& s : before.sessions) {
    for (const auto& st : s.streams) {
      for (size_t i = 0; i + 1 < st.chunks.size(); ++i) {
        if (st.chunks[i + 1].payloadOffset - sizeof(ChunkHeader) ==
            alignUp(st.chunks[i].payloadOffset + st.chunks[i].length)) {
          victim = &st.chunks[i];
          owner = &s;
          break;
        }
      }
      if (victim)
        break;
    }
    if (victim)
      break;
  }
  ASSERT_NE(victim, nullptr);
  std::memset(image.data() + victim->payloadOffset - sizeof(ChunkHeader), 0, sizeof(ChunkHeader));
  TapContents after;
  TapDiagnostics diag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &after, &diag));
  EXPECT_EQ(diag.errors(), 1u) << describe(diag);
  EXPECT_NE(describe(diag).find("chunk header missing"), std::string::npos);
  const TapSessionContents* s = testing::findSession(after, owner->sessionId);
  ASSERT_NE(s, nullptr);
  size_t total = 0;
  size_t totalBefore = 0;
  for (int d = 0; d < 2; ++d) {
    total += s->streams[d].chunks.size();
    totalBefore += owner->streams[d].chunks.size();
  }
  EXPECT_EQ(total + 1, totalBefore);
}

// A session's payload may itself be a tap file (someone copies one through the proxy); when
// resynchronizing after damage, its blocks must not be taken for this file's.
TEST(TapReader, TapFileInsideAPayloadIsNotMistakenForBlocks) {
  const SynthResult inner = synthesize(small(7));
  const std::vector<uint8_t> innerImage = applyWrites(inner.writes);

  TapFileIdentity id;
  id.listener = "outer";
  id.salt = 42;
  TapLayout layout(id, {});
  std::vector<testing::WriteOp> writes;
  auto emit = [&writes](const TapRecord& r) {
    writes.push_back({r.offset, std::vector<uint8_t>(r.bytes.begin(), r.bytes.begin() + r.size)});
  };
  emit(layout.fileHeader());
  TapSession s;
  TapSessionInfo info;
  info.sessionId = 1;
  info.client = TapAddress::ipv4({1, 2, 3, 4}, 5);
  info.local = TapAddress::ipv4({5, 6, 7, 8}, 9);
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info, &r), TapStatus::kOk);
  emit(r);
  TapReservation res;
  const auto len = static_cast<uint32_t>(innerImage.size());
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, len, Fit::kWhole, &res), TapStatus::kOk);
  emit(res.extentHeader);
  const uint64_t extentAt = res.extentHeader.offset;
  writes.push_back({res.payloadOffset, innerImage});
  ASSERT_EQ(layout.commitChunk(s, res, len, 1, &r), TapStatus::kOk);
  emit(r);
  ASSERT_EQ(layout.endDirection(s, Direction::kRequest, EndKind::kFin, 0, 2, &r), TapStatus::kOk);
  emit(r);
  ASSERT_EQ(layout.closeSession(s, CloseReason::kNormal, 0, 3, &r), TapStatus::kOk);
  emit(r);
  ASSERT_EQ(layout.finish(0, 4, &r), TapStatus::kOk);
  emit(r);
  std::vector<uint8_t> image = applyWrites(writes);

  TapContents ok;
  TapDiagnostics okDiag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &ok, &okDiag));
  EXPECT_EQ(okDiag.errors(), 0u) << describe(okDiag);
  ASSERT_EQ(ok.sessions.size(), 1u);

  // Now the extent header is lost: the scan must skip the whole payload.
  std::memset(image.data() + extentAt, 0, sizeof(ExtentHeader));
  TapContents contents;
  TapDiagnostics diag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
  ASSERT_EQ(contents.sessions.size(), 1u) << describe(diag);
  EXPECT_EQ(contents.sessions[0].sessionId, 1u);
  EXPECT_TRUE(contents.sessions[0].streams[0].chunks.empty());
  EXPECT_TRUE(contents.sessions[0].close.has_value());
  EXPECT_TRUE(contents.file.finished);
}

TEST(TapReader, RandomDamageNeverCrashes) {
  const SynthResult synth = synthesize(small(8));
  const std::vector<uint8_t> image = applyWrites(synth.writes);
  std::mt19937_64 rng(8);
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> copy = image;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) {
      const size_t at = rng() % copy.size();
      switch (rng() % 3) {
        case 0:
          copy[at] ^= static_cast<uint8_t>(1 + rng() % 255);
          break;
        case 1:
          std::memset(copy.data() + at, 0, std::min<size_t>(copy.size() - at, rng() % 64));
          break;
        default:
          std::memset(copy.data() + at, 0xff, std::min<size_t>(copy.size() - at, rng() % 16));
          break;
      }
    }
    copy.resize(rng() % 4 == 0 ? rng() % copy.size() : copy.size());
    TapContents contents;
    TapDiagnostics diag;
    parseTap(copy.data(), copy.size(), &contents, &diag);
    for (const auto& s : contents.sessions) {
      for (const auto& st : s.streams) {
        for (const auto& c : st.chunks) {
          ASSERT_LE(c.payloadOffset + c.length, copy.size());
        }
      }
    }
  }
}

TEST(TapReader, UnusableHeadersAreRejected) {
  TapContents contents;
  TapDiagnostics diag;
  EXPECT_FALSE(parseTap(nullptr, 0, &contents, &diag));
  const SynthResult synth = synthesize(small(9));
  std::vector<uint8_t> image = applyWrites(synth.writes);
  image[9] = 2;  // version byte, the crc no longer matches
  TapDiagnostics d2;
  EXPECT_FALSE(parseTap(image.data(), image.size(), &contents, &d2));
  EXPECT_NE(describe(d2).find("checksum"), std::string::npos);
  image[0] = 'X';
  TapDiagnostics d3;
  EXPECT_FALSE(parseTap(image.data(), image.size(), &contents, &d3));
  EXPECT_NE(describe(d3).find("bad magic"), std::string::npos);
}

TEST(TapReader, FileWithoutEndRecordIsReportedUnfinished) {
  SynthOptions o = small(10);
  o.finish = false;
  const SynthResult synth = synthesize(o);
  const std::vector<uint8_t> image = applyWrites(synth.writes);
  TapContents contents;
  TapDiagnostics diag;
  ASSERT_TRUE(parseTap(image.data(), image.size(), &contents, &diag));
  EXPECT_EQ(diag.errors(), 1u);
  EXPECT_NE(describe(diag).find("unfinished"), std::string::npos);
  EXPECT_FALSE(contents.file.finished);
  expectSessionsMatch(contents, image, synth);
}

}  // namespace
}  // namespace grelay::tap
