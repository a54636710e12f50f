// Fuzz target: the tap writer's layout engine against the reader, round trip. The input is a
// script of engine actions (open sessions, reserve chunks with either fit, commit them with
// any received length, abandon them clean or dirty, record gaps, end directions with pending
// reservations, close sessions, fill the byte budget, finish or not). The target plays it
// through TapLayout exactly as the engine's protocol allows (FORMAT.md, "Writer protocol"),
// keeps every WRITE the engine would issue (payloads are deterministic pseudo-random bytes),
// builds the file image and parses it back. Properties:
//   - the layout never hands out overlapping byte ranges (all WRITEs are disjoint), never
//     places a record past fileSize(), never lets the file exceed max_size;
//   - complete file (every write landed, finish() written): parseTap() reports no error and
//     returns exactly the recorded sessions, with every committed chunk (stream offset,
//     length, time, bytes), every recorded gap and every end record as written;
//   - crash-like file (a pseudo-random subset of the writes lost, a chunk header always with
//     its payload since the engine writes it only after the payload landed; maybe no
//     finish()): every chunk and gap the reader returns is one that was really committed,
//     bytes included;
//   - in both cases the export is a well-formed pcap (tap_checks.h).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/tap/format.h"
#include "proxy/tap/layout.h"
#include "proxy/tap/reader.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/tap_checks.h"

namespace {

using namespace grelay::tap;
using grelay::fuzz::ByteReader;

constexpr uint64_t kMaxImage = 2u << 20;  // stop acting once the file is this large
constexpr size_t kMaxLive = 12;
constexpr size_t kMaxOps = 2000;

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The bytes a stream carries at [offset, offset + n): a function of (salt, session, direction,
// offset), never of the fuzz input, so no input can smuggle a valid header into a payload.
std::vector<uint8_t> payloadBytes(uint64_t salt, uint64_t session, size_t dir, uint64_t offset,
                                  uint32_t n) {
  std::vector<uint8_t> out(n);
  uint64_t x = salt ^ (session * 0x100000001b3ull) ^ (dir << 63) ^ (offset * 0x9e3779b9ull);
  for (uint32_t i = 0; i < n; i += 8) {
    const uint64_t r = splitmix(x);
    std::memcpy(out.data() + i, &r, std::min<uint32_t>(8, n - i));
  }
  return out;
}

struct Write {
  uint64_t offset;
  std::vector<uint8_t> bytes;
  const char* what;
  size_t after = SIZE_MAX;  // a chunk header is written only once its payload is
};

struct ExpChunk {
  uint64_t streamOffset;
  uint32_t length;
  uint64_t timeNs;
};

struct ExpStream {
  std::vector<ExpChunk> chunks;
  std::vector<TapGap> gaps;
  std::optional<TapEnd> end;
  uint64_t position = 0;  // stream bytes accounted (committed + gaps, recorded or not)
  bool pending = false;
  TapReservation reservation;
  Fit fit = Fit::kWhole;
  uint32_t asked = 0;
};

struct ExpSession {
  TapSessionInfo info;
  TapSession tap;
  ExpStream streams[2];
  bool closed = false;
  std::optional<TapClose> close;
};

class Script {
public:
  Script(const uint8_t* data, size_t size) : in_(data, size) {}

  void run() {
    // Header: layout options, salt, and how the file ends.
    TapLayoutOptions options;
    const uint8_t budget = in_.u8();
    options.maxSize = budget < 96    ? 0
                      : budget < 200 ? in_.range(1024, 1 << 20)
                                     : in_.range(1, 1024);
    if (options.maxSize != 0 && options.maxSize < 1024) {
      options.maxSize += 1024;  // the engine's smallest per-file budget: 1MiB / 1024 workers
    }
    if (in_.flag()) {
      options.firstExtentSize = static_cast<uint32_t>(in_.range(0, 1 << 16));
      options.maxExtentSize = static_cast<uint32_t>(in_.range(0, 1 << 21));
      options.minCappedPayload = static_cast<uint32_t>(in_.range(0, 1 << 14));
    }
    maxSize_ = options.maxSize;
    identity_.listener = "fuzz";
    identity_.worker = in_.u8();
    identity_.pid = 4242;
    identity_.createdNs = 1'700'000'000'000'000'000ull;
    identity_.salt = in_.u64();
    const uint8_t ending = in_.u8();
    finish_ = (ending & 3) != 0;       // 3 of 4 files are finished
    lossy_ = (ending & 0x1c) == 0x1c;  // 1 of 8 loses writes
    closeAll_ = (ending & 0x20) != 0;  // a stopping engine closes what is still open
    now_ = identity_.createdNs;

    layout_.emplace(identity_, options);
    emit(layout_->fileHeader(), "file header");

    for (size_t op = 0; op < kMaxOps && !in_.empty() && layout_->fileSize() < kMaxImage; ++op) {
      now_ += 1 + in_.u8() * 1000ull;
      step(in_.u8());
      checkBudget();
    }
    if (closeAll_) {
      for (auto& s : sessions_) {
        if (s->tap.isOpen()) {
          closeSession(*s, true);
        }
      }
    }
    if (finish_) {
      TapRecord r;
      FUZZ_CHECK(layout_->finish(dropped_, now_, &r) == TapStatus::kOk, "finish");
      emit(r, "file end");
    }
    checkBudget();
    checkDisjoint();
    verify();
  }

private:
  void emit(const TapRecord& r, const char* what) {
    FUZZ_CHECK(r.size > 0 && r.size <= kMaxRecordSize, what);
    FUZZ_CHECK(r.offset % kAlign == 0, std::string(what) + " aligned");
    FUZZ_CHECK(r.offset + r.size <= layout_->fileSize(), std::string(what) + " inside the file");
    writes_.push_back(Write{r.offset, std::vector<uint8_t>(r.data(), r.data() + r.size), what});
  }

  void checkBudget() {
    if (maxSize_ != 0) {
      FUZZ_CHECK(layout_->fileSize() <= maxSize_,
                 "file size " + std::to_string(layout_->fileSize()) + " within max_size " +
                     std::to_string(maxSize_));
    }
  }

  ExpSession* pickOpen() {
    std::vector<ExpSession*> open;
    for (auto& s : sessions_) {
      if (s->tap.isOpen()) {
        open.push_back(s.get());
      }
    }
    if (open.empty()) {
      return nullptr;
    }
    return open[in_.u8() % open.size()];
  }

  size_t liveCount() const {
    size_t n = 0;
    for (const auto& s : sessions_) {
      n += s->tap.isOpen();
    }
    return n;
  }

  TapAddress address(bool allowUnknown) {
    const uint8_t kind = in_.u8() % (allowUnknown ? 3 : 2);
    const uint16_t port = in_.u16();
    if (kind == 0) {
      return TapAddress::ipv4({10, in_.u8(), in_.u8(), in_.u8()}, port);
    }
    if (kind == 1) {
      std::array<uint8_t, 16> a{};
      a[0] = 0xfd;
      a[15] = in_.u8();
      if (in_.flag()) {  // v4-mapped
        a = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, in_.u8()};
      }
      return TapAddress::ipv6(a, port);
    }
    return TapAddress{};
  }

  void open() {
    if (liveCount() >= kMaxLive) {
      return;
    }
    auto s = std::make_unique<ExpSession>();
    s->info.sessionId = 1000 + sessions_.size() + refused_;
    s->info.timeNs = now_;
    s->info.flags = in_.flag() ? kSessionTlsTerminated : 0;
    s->info.client = address(false);
    s->info.local = address(false);
    s->info.upstream = address(true);
    TapRecord r;
    const TapStatus st = layout_->openSession(s->tap, s->info, &r);
    if (st == TapStatus::kFull) {
      FUZZ_CHECK(maxSize_ != 0, "unlimited file refused a session");
      ++refused_;
      return;
    }
    FUZZ_CHECK(st == TapStatus::kOk, std::string("openSession: ") + toString(st));
    emit(r, "session open");
    sessions_.push_back(std::move(s));
  }

  uint32_t chunkLength() {
    const uint8_t k = in_.u8();
    if (k < 160) {
      return static_cast<uint32_t>(in_.range(1, 3000));
    }
    if (k < 250) {
      return static_cast<uint32_t>(in_.range(1, 70000));
    }
    return static_cast<uint32_t>(in_.range(1, 300000));
  }

  void reserve(ExpSession& s, size_t d) {
    ExpStream& st = s.streams[d];
    if (st.pending || st.end || st.gaps.size() + st.chunks.size() > 4000) {
      return;
    }
    const uint32_t want = chunkLength();
    const Fit fit = in_.flag() ? Fit::kCapToExtent : Fit::kWhole;
    TapReservation res;
    const TapStatus rs = layout_->reserveChunk(s.tap, static_cast<Direction>(d), want, fit, &res);
    if (rs == TapStatus::kFull) {
      FUZZ_CHECK(maxSize_ != 0, "unlimited file refused a chunk");
      // The engine counts the bytes as dropped and accounts them as a gap.
      dropped_ += want;
      gap(s, d, want, GapReason::kFull);
      return;
    }
    FUZZ_CHECK(rs == TapStatus::kOk, std::string("reserveChunk: ") + toString(rs));
    FUZZ_CHECK(res.capacity >= 1 && res.capacity <= want, "capacity 1..maxLength");
    if (fit == Fit::kWhole) {
      FUZZ_CHECK(res.capacity == want, "a kWhole reservation is never capped");
    }
    FUZZ_CHECK(res.payloadOffset == res.headerOffset + sizeof(ChunkHeader), "payload after header");
    FUZZ_CHECK(res.payloadOffset + res.capacity <= layout_->fileSize(), "slot inside the file");
    if (res.hasExtentHeader) {
      emit(res.extentHeader, "extent header");
      uint32_t extentSize = 0;
      std::memcpy(&extentSize, res.extentHeader.data() + offsetof(BlockHeader, size), 4);
      const uint64_t extentEnd = res.extentHeader.offset + extentSize;
      FUZZ_CHECK(res.payloadOffset + res.capacity <= extentEnd, "slot inside its extent");
    }
    st.pending = true;
    st.reservation = res;
    st.fit = fit;
    st.asked = want;
  }

  // Bytes a payload WRITE may have put into a slot that is then given up.
  void dirtySlot(const ExpStream& st) {
    const uint32_t n = static_cast<uint32_t>(in_.range(1, st.reservation.capacity));
    writes_.push_back(
        Write{st.reservation.payloadOffset,
              payloadBytes(identity_.salt, 0xd1d1, 0, st.reservation.payloadOffset, n),
              "dropped payload"});
  }

  void complete(ExpSession& s, size_t d) {
    ExpStream& st = s.streams[d];
    if (!st.pending) {
      return;
    }
    const uint8_t how = in_.u8() % 8;
    if (how <= 1) {
      const bool dirty = how == 1;
      if (dirty) {
        dirtySlot(st);
      }
      FUZZ_CHECK(layout_->abandonChunk(s.tap, st.reservation, dirty) == TapStatus::kOk, "abandon");
      st.pending = false;
      return;
    }
    const uint32_t got = st.fit == Fit::kWhole
                             ? st.reservation.capacity
                             : static_cast<uint32_t>(in_.range(1, st.reservation.capacity));
    TapRecord header;
    FUZZ_CHECK(layout_->commitChunk(s.tap, st.reservation, got, now_, &header) == TapStatus::kOk,
               "commitChunk");
    FUZZ_CHECK(header.offset == st.reservation.headerOffset, "header where reserved");
    writes_.push_back(Write{st.reservation.payloadOffset,
                            payloadBytes(identity_.salt, s.info.sessionId, d, st.position, got),
                            "payload"});
    emit(header, "chunk header");
    writes_.back().after = writes_.size() - 2;
    st.chunks.push_back(ExpChunk{st.position, got, now_});
    st.position += got;
    st.pending = false;
    FUZZ_CHECK(s.tap.streamBytes(static_cast<Direction>(d)) == st.position, "stream bytes");
  }

  void gap(ExpSession& s, size_t d, uint64_t bytes, GapReason reason) {
    ExpStream& st = s.streams[d];
    TapRecord r;
    const TapStatus gs =
        layout_->recordGap(s.tap, static_cast<Direction>(d), bytes, reason, now_, &r);
    if (gs == TapStatus::kOk) {
      emit(r, "gap");
      st.gaps.push_back(TapGap{st.position, bytes, now_, static_cast<uint8_t>(reason)});
    } else {
      FUZZ_CHECK(gs == TapStatus::kFull && maxSize_ != 0,
                 std::string("recordGap: ") + toString(gs));
    }
    st.position += bytes;
    FUZZ_CHECK(s.tap.streamBytes(static_cast<Direction>(d)) == st.position,
               "a gap advances the stream even when refused");
  }

  void endDirection(ExpSession& s, size_t d, bool reset) {
    ExpStream& st = s.streams[d];
    if (st.end) {
      return;
    }
    if (st.pending && in_.flag()) {
      dirtySlot(st);
    }
    TapRecord r;
    const EndKind kind = reset ? EndKind::kReset : EndKind::kFin;
    const int32_t error = reset ? 104 : 0;
    FUZZ_CHECK(layout_->endDirection(s.tap, static_cast<Direction>(d), kind, error, now_, &r) ==
                   TapStatus::kOk,
               "endDirection always fits");
    emit(r, "direction end");
    st.pending = false;
    st.end = TapEnd{kind, now_, st.position, error};
  }

  void closeSession(ExpSession& s, bool shutdown) {
    for (ExpStream& st : s.streams) {
      if (st.pending && in_.flag()) {
        dirtySlot(st);
      }
      st.pending = false;
    }
    TapRecord r;
    const CloseReason reason =
        shutdown ? CloseReason::kShutdown : static_cast<CloseReason>(in_.u8() % 5);
    FUZZ_CHECK(layout_->closeSession(s.tap, reason, 0, now_, &r) == TapStatus::kOk,
               "closeSession always fits");
    emit(r, "session close");
    s.closed = true;
    s.close = TapClose{now_, static_cast<uint32_t>(reason), 0};
  }

  void step(uint8_t op) {
    switch (op % 16) {
      case 0:
      case 1:
        open();
        return;
      default:
        break;
    }
    ExpSession* s = pickOpen();
    if (s == nullptr) {
      open();
      return;
    }
    const size_t d = in_.u8() & 1;
    switch (op % 16) {
      case 2:
      case 3:
      case 4:
      case 5:
        reserve(*s, d);
        return;
      case 6:
      case 7:
      case 8:
      case 9:
        complete(*s, d);
        return;
      case 10:
        if (!s->streams[d].pending && !s->streams[d].end) {
          gap(*s, d, in_.range(1, 100000), static_cast<GapReason>(1 + in_.u8() % 4));
        }
        return;
      case 11:
      case 12:
        endDirection(*s, d, in_.flag());
        return;
      case 13:
        closeSession(*s, false);
        return;
      default:
        // Both steps of a chunk at once (the mainline path's usual rhythm).
        reserve(*s, d);
        complete(*s, d);
        return;
    }
  }

  void checkDisjoint() const {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const Write& w : writes_) {
      FUZZ_CHECK(w.offset + w.bytes.size() <= layout_->fileSize(),
                 std::string(w.what) + " inside the file");
      ranges.emplace_back(w.offset, w.offset + w.bytes.size());
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      FUZZ_CHECK(ranges[i].first >= ranges[i - 1].second,
                 "writes overlap at " + std::to_string(ranges[i].first));
    }
  }

  const ExpSession* find(uint64_t id) const {
    for (const auto& s : sessions_) {
      if (s->info.sessionId == id) {
        return s.get();
      }
    }
    return nullptr;
  }

  void verify() {
    std::vector<uint8_t> image(layout_->fileSize(), 0);
    uint64_t rng = identity_.salt ^ writes_.size();
    const uint64_t lossPercent = 1 + splitmix(rng) % 30;
    bool lost = false;
    std::vector<bool> landed(writes_.size(), true);
    for (size_t i = 0; i < writes_.size(); ++i) {
      const Write& w = writes_[i];
      if ((lossy_ && splitmix(rng) % 100 < lossPercent) ||
          (w.after != SIZE_MAX && !landed[w.after])) {
        landed[i] = false;
        lost = true;
        continue;
      }
      std::memcpy(image.data() + w.offset, w.bytes.data(), w.bytes.size());
    }
    TapContents contents;
    TapDiagnostics diag;
    const bool parsed = parseTap(image.data(), image.size(), &contents, &diag);
    if (!lost) {
      FUZZ_CHECK(parsed, "a written file parses");
    }
    if (!parsed) {
      return;
    }
    grelay::fuzz::checkTapContents(image.size(), contents, diag);
    const bool exact = !lost;
    if (exact) {
      std::string first;
      for (const TapDiagnostic& item : diag.items()) {
        if (item.error) {
          first = "at " + std::to_string(item.offset) + ": " + item.message;
          break;
        }
      }
      FUZZ_CHECK(diag.errors() == (finish_ ? 0u : 1u), "errors in a written file: " + first);
      FUZZ_CHECK(contents.file.finished == finish_, "file end record");
      if (finish_) {
        FUZZ_CHECK(contents.file.droppedBytes == dropped_, "dropped bytes");
        FUZZ_CHECK(contents.file.full == layout_->full(), "full flag");
        FUZZ_CHECK(contents.file.sessionsDeclared == sessions_.size(), "sessions declared");
      }
      FUZZ_CHECK(contents.sessions.size() == sessions_.size(), "every recorded session is read");
    }
    for (const TapSessionContents& got : contents.sessions) {
      const ExpSession* want = find(got.sessionId);
      FUZZ_CHECK(want != nullptr, "session " + std::to_string(got.sessionId) + " was recorded");
      const std::string ctx = "session " + std::to_string(got.sessionId);
      if (got.hasOpen) {
        FUZZ_CHECK(got.client == want->info.client && got.local == want->info.local &&
                       got.upstream == want->info.upstream && got.flags == want->info.flags &&
                       got.openTimeNs == want->info.timeNs,
                   ctx + ": open record");
      } else {
        FUZZ_CHECK(!exact, ctx + ": open record missing");
      }
      if (exact) {
        FUZZ_CHECK(got.close.has_value() == want->closed, ctx + ": close record");
      }
      if (got.close) {
        FUZZ_CHECK(want->close && got.close->reason == want->close->reason &&
                       got.close->timeNs == want->close->timeNs,
                   ctx + ": close record contents");
      }
      for (size_t d = 0; d < 2; ++d) {
        const TapStreamContents& gs = got.streams[d];
        const ExpStream& ws = want->streams[d];
        const std::string sctx = ctx + (d ? " response" : " request");
        if (exact) {
          FUZZ_CHECK(gs.chunks.size() == ws.chunks.size(),
                     sctx + ": chunks " + std::to_string(gs.chunks.size()) + " of " +
                         std::to_string(ws.chunks.size()));
          FUZZ_CHECK(gs.gaps.size() == ws.gaps.size(), sctx + ": gaps");
          FUZZ_CHECK(gs.end.has_value() == ws.end.has_value(), sctx + ": end record");
        }
        for (const TapChunk& c : gs.chunks) {
          auto it = std::find_if(ws.chunks.begin(), ws.chunks.end(), [&](const ExpChunk& e) {
            return e.streamOffset == c.streamOffset;
          });
          FUZZ_CHECK(it != ws.chunks.end() && it->length == c.length && it->timeNs == c.timeNs,
                     sctx + ": chunk at stream offset " + std::to_string(c.streamOffset));
          const std::vector<uint8_t> bytes =
              payloadBytes(identity_.salt, got.sessionId, d, c.streamOffset, c.length);
          FUZZ_CHECK(std::memcmp(image.data() + c.payloadOffset, bytes.data(), c.length) == 0,
                     sctx + ": chunk bytes at stream offset " + std::to_string(c.streamOffset));
        }
        for (const TapGap& g : gs.gaps) {
          auto it = std::find_if(ws.gaps.begin(), ws.gaps.end(), [&](const TapGap& e) {
            return e.streamOffset == g.streamOffset && e.bytes == g.bytes && e.reason == g.reason &&
                   e.timeNs == g.timeNs;
          });
          FUZZ_CHECK(it != ws.gaps.end(), sctx + ": gap at " + std::to_string(g.streamOffset));
        }
        if (gs.end) {
          FUZZ_CHECK(ws.end && gs.end->kind == ws.end->kind &&
                         gs.end->streamBytes == ws.end->streamBytes &&
                         gs.end->timeNs == ws.end->timeNs && gs.end->error == ws.end->error,
                     sctx + ": end record contents");
        }
      }
    }
    grelay::fuzz::exportAndCheck(image.data(), image.size(), contents);
  }

  ByteReader in_;
  TapFileIdentity identity_;
  std::optional<TapLayout> layout_;
  std::vector<std::unique_ptr<ExpSession>> sessions_;
  std::vector<Write> writes_;
  uint64_t maxSize_ = 0;
  uint64_t now_ = 0;
  uint64_t dropped_ = 0;
  uint64_t refused_ = 0;
  bool finish_ = true;
  bool lossy_ = false;
  bool closeAll_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Script(data, size).run();
  return 0;
}
