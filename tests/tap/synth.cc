#include "tests/tap/synth.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace grelay::tap::testing {
namespace {

struct Live {
  int index;
  TapSession tap;
  uint64_t target[2];  // bytes to carry per direction
  bool ended[2] = {false, false};
};

class Synth {
public:
  explicit Synth(const SynthOptions& o) : o_(o), rng_(o.seed) {
    result_.identity.listener = "web";
    result_.identity.worker = o.worker;
    result_.identity.pid = 4242;
    result_.identity.createdNs = 1'700'000'000'000'000'000ull + o.seed * 1'000'000'000ull;
    result_.identity.salt = rng_();
    layout_.emplace(result_.identity, o.layout);
    now_ = result_.identity.createdNs;
  }

  SynthResult run() {
    emit(layout_->fileHeader(), -1);
    uint32_t opened = 0;
    std::vector<std::unique_ptr<Live>> live;
    while (opened < o_.sessions || !live.empty()) {
      now_ += 1 + rng_() % 2'000'000;
      if (opened < o_.sessions && (live.size() < o_.parallel && chance(50))) {
        open(opened++, live);
        continue;
      }
      if (live.empty()) {
        continue;
      }
      const size_t pick = rng_() % live.size();
      if (step(*live[pick])) {
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(pick));
      }
    }
    if (o_.finish) {
      TapRecord r;
      if (layout_->finish(dropped_, now_, &r) != TapStatus::kOk) {
        throw std::runtime_error("finish failed");
      }
      emit(r, -1);
    }
    result_.fileSize = layout_->fileSize();
    return std::move(result_);
  }

private:
  bool chance(uint32_t percent) { return rng_() % 100 < percent; }
  uint64_t between(uint64_t lo, uint64_t hi) { return lo + rng_() % (hi - lo + 1); }

  void emit(const TapRecord& r, int session) {
    WriteOp w;
    w.offset = r.offset;
    w.bytes.assign(r.bytes.begin(), r.bytes.begin() + r.size);
    w.session = session;
    note(w);
    result_.writes.push_back(std::move(w));
  }
  void note(const WriteOp& w) {
    if (w.session >= 0) {
      auto& s = result_.sessions[static_cast<size_t>(w.session)];
      s.lastByte = std::max(s.lastByte, w.offset + w.bytes.size());
    }
  }

  void check(TapStatus st, const char* what) {
    if (st != TapStatus::kOk) {
      throw std::runtime_error(std::string(what) + ": " + toString(st));
    }
  }

  void open(uint32_t n, std::vector<std::unique_ptr<Live>>& live) {
    ExpectedSession e;
    TapSessionInfo& info = e.info;
    info.sessionId = 1000 + n;
    info.timeNs = now_;
    const uint16_t port = static_cast<uint16_t>(o_.firstPort + n);
    switch (n % 4) {
      case 0:
      case 1:
        info.client =
            TapAddress::ipv4({10, 1, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)}, port);
        info.local = TapAddress::ipv4({127, 0, 0, 1}, 8080);
        info.upstream = TapAddress::ipv4({127, 0, 0, 2}, 8000);
        break;
      case 2:
        info.client = TapAddress::ipv6({0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)},
                                       port);
        info.local = TapAddress::ipv6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 8443);
        info.flags = kSessionTlsTerminated;
        break;
      default:  // an IPv4 client on a dual-stack listener: v4-mapped addresses
        info.client = TapAddress::ipv6(
            {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, static_cast<uint8_t>(n)}, port);
        info.local =
            TapAddress::ipv6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 200}, 8080);
        break;
    }
    auto l = std::make_unique<Live>();
    l->index = static_cast<int>(result_.sessions.size());
    result_.sessions.push_back(std::move(e));
    TapRecord r;
    const TapStatus st = layout_->openSession(l->tap, info, &r);
    if (st == TapStatus::kFull) {
      result_.sessions.back().recorded = false;
      return;
    }
    check(st, "openSession");
    emit(r, l->index);
    for (int d = 0; d < 2; ++d) {
      l->target[d] = chance(10) ? 0 : between(1, o_.maxSessionBytes);
    }
    live.push_back(std::move(l));
  }

  // One action on a session; true when it closed.
  bool step(Live& l) {
    ExpectedSession& e = result_.sessions[static_cast<size_t>(l.index)];
    const size_t d = rng_() % 2;
    const Direction dir = static_cast<Direction>(d);
    ExpectedStream& st = e.streams[d];
    if (l.ended[0] && l.ended[1]) {
      TapRecord r;
      check(layout_->closeSession(l.tap, CloseReason::kNormal, 0, now_, &r), "closeSession");
      emit(r, l.index);
      e.closed = true;
      return true;
    }
    if (l.ended[d]) {
      return false;
    }
    if (st.bytes.size() >= l.target[d]) {
      const EndKind kind = chance(o_.resetPercent) ? EndKind::kReset : EndKind::kFin;
      TapRecord r;
      check(layout_->endDirection(l.tap, dir, kind, kind == EndKind::kReset ? 104 : 0, now_, &r),
            "endDirection");
      emit(r, l.index);
      st.end = kind;
      l.ended[d] = true;
      return false;
    }
    const uint64_t left = l.target[d] - st.bytes.size();
    const uint32_t want = static_cast<uint32_t>(std::min<uint64_t>(left, between(1, o_.maxChunk)));
    if (chance(o_.gapPercent)) {
      const uint32_t n = want;
      append(st, n, true);
      TapRecord r;
      const TapStatus gs = layout_->recordGap(l.tap, dir, n, GapReason::kMaxLag, now_, &r);
      if (gs == TapStatus::kOk) {
        emit(r, l.index);
      } else if (gs != TapStatus::kFull) {
        check(gs, "recordGap");
      }
      return false;
    }
    const bool group = chance(50);
    TapReservation res;
    if (group && chance(o_.abandonPercent)) {
      // The receive failed (e.g. ENOBUFS): nothing written.
      const TapStatus rs = layout_->reserveChunk(l.tap, dir, want, Fit::kCapToExtent, &res);
      if (rs == TapStatus::kOk) {
        if (res.hasExtentHeader) {
          emit(res.extentHeader, l.index);
        }
        check(layout_->abandonChunk(l.tap, res), "abandonChunk");
      }
    }
    const TapStatus rs =
        layout_->reserveChunk(l.tap, dir, want, group ? Fit::kCapToExtent : Fit::kWhole, &res);
    if (rs == TapStatus::kFull) {
      // Not recorded: the engine counts the bytes and accounts them as a gap.
      append(st, want, true);
      dropped_ += want;
      TapRecord r;
      const TapStatus gs = layout_->recordGap(l.tap, dir, want, GapReason::kFull, now_, &r);
      if (gs == TapStatus::kOk) {
        emit(r, l.index);
      }
      return false;
    }
    check(rs, "reserveChunk");
    if (res.hasExtentHeader) {
      emit(res.extentHeader, l.index);
    }
    // Group path: the receive returns up to the capped length.
    const uint32_t got = group ? static_cast<uint32_t>(between(1, res.capacity)) : want;
    if (!group && res.capacity != want) {
      throw std::runtime_error("kWhole reservation was capped");
    }
    const size_t start = st.bytes.size();
    append(st, got, false);
    WriteOp payload;
    payload.offset = res.payloadOffset;
    payload.bytes.assign(st.bytes.begin() + static_cast<std::ptrdiff_t>(start), st.bytes.end());
    payload.session = l.index;
    note(payload);
    result_.writes.push_back(std::move(payload));
    TapRecord header;
    check(layout_->commitChunk(l.tap, res, got, now_, &header), "commitChunk");
    emit(header, l.index);
    return false;
  }

  void append(ExpectedStream& st, uint64_t n, bool gap) {
    if (gap) {
      st.gaps.emplace_back(st.bytes.size(), n);
    }
    const size_t start = st.bytes.size();
    st.bytes.resize(start + n);
    for (uint64_t i = 0; i < n; i += 8) {
      const uint64_t r = rng_();
      std::memcpy(st.bytes.data() + start + i, &r, std::min<uint64_t>(8, n - i));
    }
  }

  SynthOptions o_;
  std::mt19937_64 rng_;
  std::optional<TapLayout> layout_;
  SynthResult result_;
  uint64_t now_ = 0;
  uint64_t dropped_ = 0;
};

}  // namespace

std::vector<uint8_t> ExpectedStream::captured() const {
  std::vector<uint8_t> out;
  uint64_t pos = 0;
  for (const auto& [offset, length] : gaps) {
    out.insert(out.end(), bytes.begin() + static_cast<std::ptrdiff_t>(pos),
               bytes.begin() + static_cast<std::ptrdiff_t>(offset));
    pos = offset + length;
  }
  out.insert(out.end(), bytes.begin() + static_cast<std::ptrdiff_t>(pos), bytes.end());
  return out;
}

SynthResult synthesize(const SynthOptions& options) {
  return Synth(options).run();
}

std::vector<uint8_t> applyWrites(const std::vector<WriteOp>& writes) {
  std::vector<uint8_t> image;
  for (const WriteOp& w : writes) {
    if (image.size() < w.offset + w.bytes.size()) {
      image.resize(w.offset + w.bytes.size(), 0);
    }
    std::memcpy(image.data() + w.offset, w.bytes.data(), w.bytes.size());
  }
  return image;
}

}  // namespace grelay::tap::testing
