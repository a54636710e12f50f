#include "proxy/tap/layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <vector>

namespace grelay::tap {
namespace {

TapFileIdentity identity() {
  TapFileIdentity id;
  id.listener = "web";
  id.worker = 3;
  id.pid = 77;
  id.createdNs = 1'700'000'000'000'000'000ull;
  id.salt = 0x1234;
  return id;
}

TapSessionInfo info(uint64_t id) {
  TapSessionInfo i;
  i.sessionId = id;
  i.timeNs = 5;
  i.client = TapAddress::ipv4({10, 0, 0, 1}, static_cast<uint16_t>(1000 + id));
  i.local = TapAddress::ipv4({127, 0, 0, 1}, 8080);
  return i;
}

struct Range {
  uint64_t begin;
  uint64_t end;
  std::string what;
};

class RangeSet {
public:
  void add(uint64_t begin, uint64_t size, std::string what) {
    ranges_.push_back({begin, begin + size, std::move(what)});
  }
  // Every range is disjoint from the others and inside [0, fileSize).
  void expectDisjoint(uint64_t fileSize) {
    std::sort(ranges_.begin(), ranges_.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
    for (size_t i = 0; i < ranges_.size(); ++i) {
      EXPECT_LE(ranges_[i].end, fileSize) << ranges_[i].what;
      if (i > 0) {
        ASSERT_LE(ranges_[i - 1].end, ranges_[i].begin)
            << ranges_[i - 1].what << " overlaps " << ranges_[i].what;
      }
    }
  }

private:
  std::vector<Range> ranges_;
};

TEST(TapLayout, FileHeaderIsTheFirst128Bytes) {
  TapLayout layout(identity(), {});
  const TapRecord& h = layout.fileHeader();
  EXPECT_EQ(h.offset, 0u);
  EXPECT_EQ(h.size, sizeof(FileHeader));
  EXPECT_EQ(std::memcmp(h.data(), "GRELAYTP", 8), 0);
  EXPECT_EQ(layout.fileSize(), sizeof(FileHeader));
  FileHeader fh;
  std::memcpy(&fh, h.data(), sizeof(fh));
  EXPECT_EQ(fh.version, kFormatVersion);
  EXPECT_EQ(fh.worker, 3u);
  EXPECT_EQ(std::string(fh.listener), "web");
  const uint32_t crc = fh.crc;
  fh.crc = 0;
  EXPECT_EQ(crc32c(&fh, sizeof(fh)), crc);
}

TEST(TapLayout, Crc32cMatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32c("123456789", 9), 0xe3069283u);
}

TEST(TapLayout, OffsetsNeverOverlapAcrossManyInterleavedStreams) {
  std::mt19937_64 rng(7);
  TapLayout layout(identity(), {});
  RangeSet ranges;
  ranges.add(0, layout.fileHeader().size, "file header");
  constexpr int kSessions = 60;
  std::vector<std::unique_ptr<TapSession>> sessions;
  for (int i = 0; i < kSessions; ++i) {
    sessions.push_back(std::make_unique<TapSession>());
    TapRecord r;
    ASSERT_EQ(layout.openSession(*sessions.back(), info(i), &r), TapStatus::kOk);
    ranges.add(r.offset, r.size, "open");
  }
  std::map<std::pair<int, int>, uint64_t> streamBytes;
  for (int step = 0; step < 20000; ++step) {
    const int s = static_cast<int>(rng() % kSessions);
    const int d = static_cast<int>(rng() % 2);
    const uint32_t want = static_cast<uint32_t>(1 + rng() % 200000);
    const Fit fit = rng() % 2 ? Fit::kWhole : Fit::kCapToExtent;
    TapReservation res;
    ASSERT_EQ(layout.reserveChunk(*sessions[s], static_cast<Direction>(d), want, fit, &res),
              TapStatus::kOk);
    ASSERT_GT(res.capacity, 0u);
    ASSERT_LE(res.capacity, want);
    if (fit == Fit::kWhole) {
      ASSERT_EQ(res.capacity, want);
    }
    ASSERT_EQ(res.payloadOffset, res.headerOffset + sizeof(ChunkHeader));
    ASSERT_EQ(res.headerOffset % kAlign, 0u);
    if (res.hasExtentHeader) {
      ranges.add(res.extentHeader.offset, res.extentHeader.size, "extent header");
    }
    if (rng() % 10 == 0) {
      ASSERT_EQ(layout.abandonChunk(*sessions[s], res, rng() % 2 == 0), TapStatus::kOk);
      continue;
    }
    const uint32_t got = static_cast<uint32_t>(1 + rng() % res.capacity);
    TapRecord header;
    ASSERT_EQ(layout.commitChunk(*sessions[s], res, got, step, &header), TapStatus::kOk);
    ASSERT_EQ(header.offset, res.headerOffset);
    ChunkHeader ch;
    std::memcpy(&ch, header.data(), sizeof(ch));
    uint64_t& expectedOffset = streamBytes[std::make_pair(s, d)];
    ASSERT_EQ(ch.streamOffset, expectedOffset);
    expectedOffset += got;
    ranges.add(header.offset, header.size, "chunk header");
    ranges.add(res.payloadOffset, got, "payload");
  }
  for (int i = 0; i < kSessions; ++i) {
    for (int d = 0; d < 2; ++d) {
      TapRecord r;
      ASSERT_EQ(
          layout.endDirection(*sessions[i], static_cast<Direction>(d), EndKind::kFin, 0, 9, &r),
          TapStatus::kOk);
      ranges.add(r.offset, r.size, "end");
    }
    TapRecord r;
    ASSERT_EQ(layout.closeSession(*sessions[i], CloseReason::kNormal, 0, 9, &r), TapStatus::kOk);
    ranges.add(r.offset, r.size, "close");
  }
  TapRecord end;
  ASSERT_EQ(layout.finish(0, 10, &end), TapStatus::kOk);
  ranges.add(end.offset, end.size, "file end");
  EXPECT_EQ(end.offset + end.size, layout.fileSize());
  ranges.expectDisjoint(layout.fileSize());
}

TEST(TapLayout, CappedReservationIsCappedToTheFirstExtent) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation res;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 65536, Fit::kCapToExtent, &res),
            TapStatus::kOk);
  EXPECT_TRUE(res.hasExtentHeader);
  EXPECT_EQ(res.extentHeader.offset, sizeof(FileHeader) + sizeof(SessionOpenRecord));
  EXPECT_EQ(res.capacity, 4096 - sizeof(ExtentHeader) - sizeof(ChunkHeader));
  EXPECT_EQ(res.headerOffset, res.extentHeader.offset + sizeof(ExtentHeader));
}

TEST(TapLayout, ExtentsDoubleUpToTheMaximum) {
  TapLayoutOptions options;
  options.firstExtentSize = 4096;
  options.maxExtentSize = 64 * 1024;
  TapLayout layout(identity(), options);
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  std::vector<uint32_t> sizes;
  for (int i = 0; i < 12; ++i) {
    TapReservation res;
    ASSERT_EQ(layout.reserveChunk(s, Direction::kResponse, 1 << 20, Fit::kCapToExtent, &res),
              TapStatus::kOk);
    ASSERT_TRUE(res.hasExtentHeader) << i;  // each full-size receive fills an extent
    ExtentHeader eh;
    std::memcpy(&eh, res.extentHeader.data(), sizeof(eh));
    EXPECT_EQ(eh.sequence, static_cast<uint32_t>(i));
    EXPECT_EQ(eh.direction, 1);
    sizes.push_back(eh.block.size);
    EXPECT_EQ(res.capacity, eh.block.size - 64);
    TapRecord h;
    ASSERT_EQ(layout.commitChunk(s, res, res.capacity, 1, &h), TapStatus::kOk);
  }
  const std::vector<uint32_t> expected = {4096,  8192,  16384, 32768, 65536, 65536,
                                          65536, 65536, 65536, 65536, 65536, 65536};
  EXPECT_EQ(sizes, expected);
}

TEST(TapLayout, WholeChunkLargerThanTheMaximumGetsItsOwnExtent) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation res;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 3 << 20, Fit::kWhole, &res),
            TapStatus::kOk);
  EXPECT_TRUE(res.hasExtentHeader);
  EXPECT_EQ(res.capacity, 3u << 20);
  TapRecord h;
  ASSERT_EQ(layout.commitChunk(s, res, 3 << 20, 1, &h), TapStatus::kOk);
  EXPECT_GE(layout.fileSize(), res.payloadOffset + (3u << 20));
}

TEST(TapLayout, SmallChunksShareAnExtent) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  uint64_t expectedHeader = 0;
  for (int i = 0; i < 10; ++i) {
    TapReservation res;
    ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &res), TapStatus::kOk);
    EXPECT_EQ(res.hasExtentHeader, i == 0);
    if (i > 0) {
      EXPECT_EQ(res.headerOffset, expectedHeader);
    }
    TapRecord h;
    ASSERT_EQ(layout.commitChunk(s, res, 37, 1, &h), TapStatus::kOk);
    expectedHeader = alignUp(res.payloadOffset + 37);
  }
}

TEST(TapLayout, ExtentWithTooLittleRoomIsLeftForANewOne) {
  TapLayoutOptions options;
  options.minCappedPayload = 2048;
  TapLayout layout(identity(), options);
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation res;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 3000, Fit::kCapToExtent, &res),
            TapStatus::kOk);
  ASSERT_EQ(res.capacity, 3000u);
  TapRecord h;
  ASSERT_EQ(layout.commitChunk(s, res, 3000, 1, &h), TapStatus::kOk);
  // 4096 - 32 - 32 - 3000 = 1032 bytes left (< 2048): a capped receive would be tiny.
  TapReservation next;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 65536, Fit::kCapToExtent, &next),
            TapStatus::kOk);
  EXPECT_TRUE(next.hasExtentHeader);
  EXPECT_EQ(next.capacity, 8192 - 64u);
  ASSERT_EQ(layout.abandonChunk(s, next), TapStatus::kOk);
  // The old extent is not revisited; the abandoned slot in the new one is reused.
  TapReservation small;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 500, Fit::kCapToExtent, &small),
            TapStatus::kOk);
  EXPECT_FALSE(small.hasExtentHeader);
  EXPECT_EQ(small.headerOffset, next.headerOffset);
}

TEST(TapLayout, AbandonedSlotIsReusedByTheNextReservation) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation a;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 1000, Fit::kCapToExtent, &a),
            TapStatus::kOk);
  ASSERT_EQ(layout.abandonChunk(s, a), TapStatus::kOk);
  TapReservation b;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 1000, Fit::kCapToExtent, &b),
            TapStatus::kOk);
  EXPECT_FALSE(b.hasExtentHeader);
  EXPECT_EQ(b.headerOffset, a.headerOffset);
}

TEST(TapLayout, DirtyAbandonMovesTheStreamToANewExtent) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation a;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 1000, Fit::kCapToExtent, &a),
            TapStatus::kOk);
  ASSERT_EQ(layout.abandonChunk(s, a, /*payloadRegionDirty=*/true), TapStatus::kOk);
  TapReservation b;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 1000, Fit::kCapToExtent, &b),
            TapStatus::kOk);
  EXPECT_TRUE(b.hasExtentHeader);
  EXPECT_GT(b.headerOffset, a.payloadOffset + 1000);
}

TEST(TapLayout, OneReservationPerStreamAtATime) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation a;
  TapReservation b;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &a), TapStatus::kOk);
  EXPECT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &b),
            TapStatus::kBadState);
  EXPECT_EQ(layout.reserveChunk(s, Direction::kResponse, 100, Fit::kWhole, &b), TapStatus::kOk);
  // The next chunk may be reserved once the length is known, before any write completed.
  TapRecord h;
  ASSERT_EQ(layout.commitChunk(s, a, 50, 1, &h), TapStatus::kOk);
  EXPECT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &a), TapStatus::kOk);
  EXPECT_EQ(layout.recordGap(s, Direction::kRequest, 10, GapReason::kMaxLag, 1, &h),
            TapStatus::kBadState);
}

TEST(TapLayout, CommitRejectsZeroAndOverlongLengths) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation a;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &a), TapStatus::kOk);
  EXPECT_EQ(layout.commitChunk(s, a, 0, 1, &r), TapStatus::kBadArgument);
  EXPECT_EQ(layout.commitChunk(s, a, 101, 1, &r), TapStatus::kBadArgument);
  EXPECT_EQ(layout.commitChunk(s, a, 100, 1, &r), TapStatus::kOk);
  EXPECT_EQ(layout.commitChunk(s, a, 100, 1, &r), TapStatus::kBadState);
  EXPECT_EQ(layout.reserveChunk(s, Direction::kRequest, 0, Fit::kWhole, &a),
            TapStatus::kBadArgument);
}

TEST(TapLayout, MaxSizeRefusesDataButKeepsRoomForEndCloseAndFileEnd) {
  TapLayoutOptions options;
  options.maxSize = 64 * 1024;
  TapLayout layout(identity(), options);
  std::vector<std::unique_ptr<TapSession>> sessions;
  for (int i = 0; i < 8; ++i) {
    sessions.push_back(std::make_unique<TapSession>());
    TapRecord r;
    ASSERT_EQ(layout.openSession(*sessions.back(), info(i), &r), TapStatus::kOk);
  }
  uint64_t recorded = 0;
  bool full = false;
  for (int step = 0; step < 1000 && !full; ++step) {
    TapSession& s = *sessions[step % 8];
    TapReservation res;
    const TapStatus st =
        layout.reserveChunk(s, static_cast<Direction>(step % 2), 3000, Fit::kCapToExtent, &res);
    if (st == TapStatus::kFull) {
      full = true;
      break;
    }
    ASSERT_EQ(st, TapStatus::kOk);
    TapRecord h;
    ASSERT_EQ(layout.commitChunk(s, res, res.capacity, 1, &h), TapStatus::kOk);
    recorded += res.capacity;
  }
  ASSERT_TRUE(full);
  EXPECT_TRUE(layout.full());
  EXPECT_GT(recorded, 30'000u);
  // Sticky: nothing new after the first refusal, not even a chunk that would fit.
  TapReservation res;
  EXPECT_EQ(layout.reserveChunk(*sessions[0], Direction::kRequest, 1, Fit::kWhole, &res),
            TapStatus::kFull);
  TapSession late;
  TapRecord r;
  EXPECT_EQ(layout.openSession(late, info(99), &r), TapStatus::kFull);
  EXPECT_FALSE(late.isOpen());
  EXPECT_EQ(layout.reserveChunk(late, Direction::kRequest, 1, Fit::kWhole, &res),
            TapStatus::kBadState);
  // A gap is refused too, but the stream position advances.
  const uint64_t before = sessions[1]->streamBytes(Direction::kResponse);
  EXPECT_EQ(layout.recordGap(*sessions[1], Direction::kResponse, 500, GapReason::kFull, 1, &r),
            TapStatus::kFull);
  EXPECT_EQ(sessions[1]->streamBytes(Direction::kResponse), before + 500);
  for (auto& s : sessions) {
    ASSERT_EQ(layout.endDirection(*s, Direction::kRequest, EndKind::kFin, 0, 2, &r),
              TapStatus::kOk);
    ASSERT_EQ(layout.endDirection(*s, Direction::kResponse, EndKind::kReset, 104, 2, &r),
              TapStatus::kOk);
    ASSERT_EQ(layout.closeSession(*s, CloseReason::kNormal, 0, 3, &r), TapStatus::kOk);
  }
  ASSERT_EQ(layout.finish(1234, 4, &r), TapStatus::kOk);
  FileEndRecord fe;
  std::memcpy(&fe, r.data(), sizeof(fe));
  EXPECT_EQ(fe.flags & kFileEndFull, kFileEndFull);
  EXPECT_EQ(fe.droppedBytes, 1234u);
  EXPECT_LE(layout.fileSize(), options.maxSize);
}

TEST(TapLayout, OpenIsRefusedWhenItsEndRecordsWouldNotFit) {
  TapLayoutOptions options;
  options.maxSize = sizeof(FileHeader) + sizeof(FileEndRecord) + sizeof(SessionOpenRecord) +
                    2 * sizeof(DirectionEndRecord) + sizeof(SessionCloseRecord);
  TapLayout layout(identity(), options);
  TapSession a;
  TapSession b;
  TapRecord r;
  ASSERT_EQ(layout.openSession(a, info(1), &r), TapStatus::kOk);
  EXPECT_EQ(layout.openSession(b, info(2), &r), TapStatus::kFull);
  TapReservation res;
  EXPECT_EQ(layout.reserveChunk(a, Direction::kRequest, 10, Fit::kWhole, &res), TapStatus::kFull);
  ASSERT_EQ(layout.endDirection(a, Direction::kRequest, EndKind::kFin, 0, 2, &r), TapStatus::kOk);
  ASSERT_EQ(layout.closeSession(a, CloseReason::kNormal, 0, 3, &r), TapStatus::kOk);
  ASSERT_EQ(layout.finish(0, 4, &r), TapStatus::kOk);
  EXPECT_LE(layout.fileSize(), options.maxSize);
}

TEST(TapLayout, NearTheBudgetASmallerExtentIsAllocated) {
  TapLayoutOptions options;
  options.maxSize = sizeof(FileHeader) + sizeof(FileEndRecord) + sizeof(SessionOpenRecord) +
                    2 * sizeof(DirectionEndRecord) + sizeof(SessionCloseRecord) + 3000;
  TapLayout layout(identity(), options);
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation res;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 65536, Fit::kCapToExtent, &res),
            TapStatus::kOk);
  EXPECT_EQ(res.capacity, 3000 - 64u);  // the rest of the budget, not the 4 KiB first extent
}

TEST(TapLayout, EndingADirectionDropsItsPendingReservation) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  TapReservation a;
  ASSERT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &a), TapStatus::kOk);
  ASSERT_EQ(layout.endDirection(s, Direction::kRequest, EndKind::kReset, 104, 2, &r),
            TapStatus::kOk);
  EXPECT_EQ(layout.commitChunk(s, a, 10, 1, &r), TapStatus::kBadState);
  EXPECT_EQ(layout.endDirection(s, Direction::kRequest, EndKind::kFin, 0, 2, &r),
            TapStatus::kBadState);
  EXPECT_EQ(layout.reserveChunk(s, Direction::kRequest, 100, Fit::kWhole, &a),
            TapStatus::kBadState);
  ASSERT_EQ(layout.closeSession(s, CloseReason::kNormal, 0, 3, &r), TapStatus::kOk);
  EXPECT_EQ(layout.closeSession(s, CloseReason::kNormal, 0, 3, &r), TapStatus::kBadState);
  EXPECT_EQ(layout.openSessions(), 0u);
}

TEST(TapLayout, NothingIsLaidOutAfterFinish) {
  TapLayout layout(identity(), {});
  TapSession s;
  TapRecord r;
  ASSERT_EQ(layout.openSession(s, info(1), &r), TapStatus::kOk);
  ASSERT_EQ(layout.finish(0, 4, &r), TapStatus::kOk);
  TapReservation res;
  EXPECT_EQ(layout.reserveChunk(s, Direction::kRequest, 1, Fit::kWhole, &res),
            TapStatus::kBadState);
  EXPECT_EQ(layout.finish(0, 4, &r), TapStatus::kBadState);
  TapSession t;
  EXPECT_EQ(layout.openSession(t, info(2), &r), TapStatus::kBadState);
}

TEST(TapLayout, FileNameNamesListenerWorkerStartTimeAndPid) {
  EXPECT_EQ(tapFileName("web", 2, 1'700'000'000'123'456'789ull, 4242),
            "web-w2-20231114T221320Z-4242.gtap");
  EXPECT_EQ(tapFileName("a/b c", 0, 0, 1), "a_b_c-w0-19700101T000000Z-1.gtap");
  EXPECT_EQ(tapFileName("..", 0, 0, 1), "_..-w0-19700101T000000Z-1.gtap");
  EXPECT_EQ(tapFileName("web", 1, 0, 7, 2), "web-w1-19700101T000000Z-7-2.gtap");
}

}  // namespace
}  // namespace grelay::tap
