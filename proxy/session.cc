#include "proxy/session.h"

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "proxy/client_hello.h"
#include "proxy/log.h"
#include "proxy/proxy_protocol.h"
#include "proxy/tls_context.h"

#include "relay/uring_compat.h"

namespace grelay::proxy {
namespace {

// queue_timeout: a waiting session looks for a free slot after 1 ms, then twice as long
// each time, at most every 5 ms (so sessions that have waited long look as often as new
// ones).
constexpr uint64_t kFirstQueueRetry = 1'000'000;
constexpr uint64_t kMaxQueueRetry = 5'000'000;

uint64_t nanos(config::Duration d) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

std::string describe(int32_t err) {
  return std::strerror(err < 0 ? -err : err);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Peer

Peer::Peer(Session& session, Kind kind, size_t mirrorIndex)
    : session_(session), kind_(kind), mirrorIndex_(mirrorIndex) {}

void Peer::enqueue(relay::ChunkRef chunk) {
  if (!tlsInUserspace()) {
    if (kind_ == Kind::Mirror && pack(chunk)) {
      return;
    }
    enqueueWire(std::move(chunk));
    return;
  }
  relay::UserBufferPool& pool = session_.host_.userPool();
  if (!tlsBacklog_.empty() ||
      pool.available() < relay::TlsChannel::outputBuffers(chunk.size(), pool.bufferSize())) {
    // No room for the ciphertext: keep the plaintext (it counts against back-pressure)
    // and encrypt when buffers come back.
    unsent_ += chunk.size();
    tlsBacklog_.push_back(std::move(chunk));
    if (!waitingBuffers_) {
      waitingBuffers_ = true;
      session_.host_.waitForBuffers(*this);
    }
    return;
  }
  encrypt(chunk);
}

bool Peer::pack(const relay::ChunkRef& chunk) {
  // A mirror that is behind holds what it is given until it can send it. A small chunk
  // would pin a whole receive buffer, and with small writes (requests of a few hundred
  // bytes) the pool would run dry long before max_lag: copy small chunks into buffers of
  // the mirror's own, filled one after another. Not while the mirror keeps up (at most
  // the send in flight queued), and at most half the user pool (the rest is for TLS).
  const uint32_t n = chunk.size();
  relay::UserBufferPool& pool = session_.host_.userPool();
  if (queue_.size() < 2 || n > pool.bufferSize() / 4) {
    return false;
  }
  PendingSend& tail = queue_.back();  // never the send in flight: that is the front
  if (tail.packed && tail.chunk.size() + n <= tail.chunk.get()->capacity) {
    std::memcpy(tail.chunk.mutableData() + tail.chunk.size(), chunk.data(), n);
    tail.chunk.get()->length += n;
    unsent_ += n;
    return true;
  }
  if (pool.available() <= pool.maxBuffers() / 2) {
    return false;
  }
  relay::ChunkRef packed = pool.allocate();
  if (!packed) {
    return false;
  }
  std::memcpy(packed.mutableData(), chunk.data(), n);
  packed.get()->length = n;
  unsent_ += n;
  queue_.push_back(PendingSend{std::move(packed), 0, true});
  return true;
}

bool Peer::encrypt(const relay::ChunkRef& chunk) {
  // Encrypt now: the plaintext buffer goes back to its pool at once and what waits in the
  // queue (and counts against back-pressure) is the ciphertext.
  if (!tls_->write(chunk.data(), chunk.size())) {
    session_.host_.listenerTrouble(*session_.listener_, "TLS: " + tls_->error());
    session_.peerFailed(*this, -EPROTO);
    return false;
  }
  flushTls();
  return true;
}

void Peer::resumeAfterBuffers() noexcept {
  waitingBuffers_ = false;
  if (session_.closing() || failed_ || fd_ < 0) {
    return;
  }
  relay::UserBufferPool& pool = session_.host_.userPool();
  while (!tlsBacklog_.empty()) {
    if (pool.available() <
        relay::TlsChannel::outputBuffers(tlsBacklog_.front().size(), pool.bufferSize())) {
      waitingBuffers_ = true;
      session_.host_.waitForBuffers(*this);
      return;
    }
    relay::ChunkRef chunk = std::move(tlsBacklog_.front());
    tlsBacklog_.pop_front();
    unsent_ -= chunk.size();
    if (!encrypt(chunk)) {
      return;
    }
    releasedChunks();
  }
  maybeFinish();
}

void Peer::enqueueWire(relay::ChunkRef chunk) {
  unsent_ += chunk.size();
  queue_.push_back(PendingSend{std::move(chunk), 0});
  if (connected_ && !sending_ && !failed_) {
    sendNext();
  }
}

void Peer::flushTls() {
  std::vector<relay::ChunkRef> out;
  tls_->takeOutbound(out);
  for (auto& c : out) {
    enqueueWire(std::move(c));
  }
}

void Peer::finishWriting() {
  if (finWanted_) {
    return;
  }
  finWanted_ = true;
  maybeFinish();
}

void Peer::maybeFinish() {
  if (!finWanted_ || !connected_ || failed_ || !tlsBacklog_.empty()) {
    return;
  }
  if (tlsInUserspace() && !closeNotifySent_) {
    closeNotifySent_ = true;
    tls_->shutdown();  // close_notify, queued behind everything encrypted so far
    flushTls();
  }
  if (!sending_ && groupSends_ == 0 && queue_.empty() && !finSent_) {
    sendFin();
  }
}

void Peer::sendFin() {
  if (ktlsSend()) {
    tls_->shutdown();  // kTLS: OpenSSL sends close_notify through the kernel
  }
  session_.host_.sockets().shutdownWrite(fd_);
  finSent_ = true;
}

void Peer::releasedChunks() {
  if (kind_ != Kind::Mirror) {
    session_.host_.relayReleasedChunks();
  }
}

void Peer::dropQueue() {
  releasedChunks();
  for (const auto& c : tlsBacklog_) {
    unsent_ -= c.size();
  }
  tlsBacklog_.clear();
  // The send in flight still reads its buffer: keep that one until it completes.
  while (queue_.size() > (sending_ ? 1u : 0u)) {
    const PendingSend& last = queue_.back();
    unsent_ -= last.chunk.size() - last.offset;
    queue_.pop_back();
  }
}

void Peer::sendNext() {
  const PendingSend& front = queue_.front();
  sending_ = true;
  activeSend_ = &sendDone_;
  ++session_.inflight_;
  session_.host_.ring().send(fd_, front.chunk.data() + front.offset,
                             front.chunk.size() - front.offset, sendFlags(), &sendDone_);
}

void Peer::onSend(int32_t res, uint32_t) noexcept {
  sending_ = false;
  --session_.inflight_;
  if (failed_ || (session_.closing() && kind_ != Kind::Mirror)) {
    dropQueue();
    session_.opDone(*this);
    return;
  }
  if (res <= 0) {
    session_.peerFailed(*this, res == 0 ? -EPIPE : res);
    return;
  }
  PendingSend& front = queue_.front();
  front.offset += static_cast<uint32_t>(res);
  unsent_ -= static_cast<uint32_t>(res);
  if (front.offset >= front.chunk.size()) {
    queue_.pop_front();  // a short send leaves the rest at the front and goes on below
    releasedChunks();
  }
  session_.peerSent(*this, static_cast<uint32_t>(res));
  if (failed_ || fd_ < 0) {
    return;
  }
  if (!queue_.empty()) {
    sendNext();
  } else {
    maybeFinish();
  }
  if (kind_ == Kind::Mirror && session_.closing()) {
    session_.opDone(*this);  // a finished session's mirror closes once it has drained
  } else {
    session_.maybeFinish();
  }
}

void Peer::onConnect(int32_t res, uint32_t) noexcept {
  connecting_ = false;
  --session_.inflight_;
  if (kind_ == Kind::Primary) {
    session_.primaryConnected(res);
  } else {
    session_.mirrorConnected(mirrorIndex_, res);
  }
}

void Peer::onPoll(int32_t res, uint32_t) noexcept {
  polling_ = false;
  --session_.inflight_;
  if (session_.closing()) {
    session_.opDone(*this);
    return;
  }
  if (session_.state_ == Session::State::ProxyHeader) {
    session_.proxyHeaderPolled(res);
    return;
  }
  if (session_.state_ == Session::State::ClientHello) {
    session_.clientHelloPolled(res);
    return;
  }
  if (session_.handshakeTimedOut_) {
    session_.handshakeTimedOut_ = false;
    session_.handshakeFailed(*this, true);
    return;
  }
  if (res < 0) {
    session_.handshakeFailed(*this, false);
    return;
  }
  session_.continueHandshake(*this);
}

void Peer::onDiscard(int32_t res, uint32_t) noexcept {
  reading_ = false;
  --session_.inflight_;
  Session& s = session_;
  if (failed_) {
    s.opDone(*this);
    return;
  }
  if (res > 0) {
    s.stats().mirrors[mirrorIndex_].discardedBytes.add(static_cast<uint64_t>(res));
    if (!(s.closing() && drained() && finSent_)) {
      uint32_t len = 0;
      uint8_t* buf = s.host_.discardBuffer(&len);
      reading_ = true;
      ++s.inflight_;
      s.host_.ring().recv(fd_, buf, len, &discardDone_);
      return;
    }
  } else if (res < 0 && res != -ECANCELED) {
    s.cutMirror(mirrorIndex_, ("receive failed: " + describe(res)).c_str());
    return;
  }
  // EOF from the mirror: it may still read; nothing more to discard.
  s.opDone(*this);
}

// ---------------------------------------------------------------------------------------
// Flow

Flow::Flow(Session& session, uint8_t direction, Peer& source, Peer& target)
    : session_(session), direction_(direction), source_(source), target_(target) {}

void Flow::arm() {
  if (session_.closing() || ended_ || receiving_ || waitingBuffers_ || !source_.connected_ ||
      source_.fd_ < 0) {
    return;
  }
  if (splice_) {
    if (!sourcePolling_ && !targetPolling_) {
      pump();
    }
    return;
  }
  if (spliceWanted_) {
    // Bytes spliced must not overtake bytes received: switch once the target has sent
    // everything queued (Session::peerSent re-arms).
    if (!target_.drained()) {
      waitingTarget_ = true;
      return;
    }
    waitingTarget_ = false;
    spliceWanted_ = false;
    splice_ = true;
    burst_ = 0;
    pump();
    return;
  }
  if (target_.unsent_ >= 2ull * session_.listener_->chunkSize) {
    paused_ = true;  // back-pressure: resumed by Session::peerSent
    return;
  }
  paused_ = false;
  if (groupCapable_) {
    // One send per socket: the group's SEND to the target must not overlap another.
    if (target_.sending_ || !target_.queue_.empty()) {
      waitingTarget_ = true;
      return;
    }
    if (session_.groupReady(*this) && session_.host_.now() >= groupBackoffUntil_) {
      submitGroup();
      return;
    }
    // A mirror still connecting (or still draining mainline chunks) can't take a group
    // member: this chunk goes the mainline way and queues for it.
  }
  receiving_ = true;
  ++session_.inflight_;
  SessionHost& host = session_.host_;
  if (!copy_ && !groupCapable_) {
    // Mainline: one multishot receive stays armed (no re-arm and no poll per chunk);
    // back-pressure cancels it (see onRecv) and arm() starts a new one.
    multishot_ = true;
    cancelling_ = false;
    host.ring().recvMultishot(source_.fd_, host.pool().groupId(), &recvDone_);
    return;
  }
  multishot_ = false;
  host.ring().recvSelect(source_.fd_, host.pool().groupId(), session_.listener_->chunkSize,
                         &recvDone_);
}

void Flow::resumeAfterBuffers() noexcept {
  waitingBuffers_ = false;
  if (copyWaiting_) {
    copyWaiting_ = false;
    if (session_.closing() || !processCopy(std::move(copyHold_))) {
      return;
    }
  }
  arm();
}

void Flow::onRecv(int32_t res, uint32_t flags) noexcept {
  // A multishot receive goes on while F_MORE is set; its last CQE ends it.
  const bool more = multishot_ && (flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    receiving_ = false;
    multishot_ = false;
    cancelling_ = false;
    --session_.inflight_;
  }
  relay::ChunkRef chunk;
  if (flags & IORING_CQE_F_BUFFER) {
    chunk = session_.host_.pool().take(static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT),
                                       res > 0 ? static_cast<uint32_t>(res) : 0);
  }
  if (session_.closing()) {
    chunk.reset();
    if (!more) {
      session_.opDone(source_);
    }
    return;
  }
  if (res > 0) {
    if (copy_) {
      if (!processCopy(std::move(chunk))) {
        return;
      }
    } else {
      session_.deliver(*this, chunk);
      chunk.reset();
      if (session_.closing()) {
        return;
      }
      if (spliceCapable_ && static_cast<uint32_t>(res) >= session_.listener_->chunkSize) {
        spliceWanted_ = true;  // a full chunk: a burst, splice the rest
      }
    }
    if (receiving_) {
      // Still armed: stop it if the target is now too far behind (or to switch to
      // splice). Chunks received before the cancel takes effect still arrive and are
      // delivered in order.
      const bool behind = target_.unsent_ >= 2ull * session_.listener_->chunkSize;
      if (!cancelling_ && (behind || spliceWanted_)) {
        cancelling_ = true;
        paused_ = behind;
        session_.host_.ring().cancel(&recvDone_, nullptr);
      }
      return;
    }
    arm();
    return;
  }
  if (res == -ECANCELED) {
    arm();  // back-pressure stopped the multishot receive: arm() decides when to go on
    return;
  }
  chunk.reset();
  if (res == -EIO && source_.tls_ != nullptr && !source_.tlsReceiveUser_) {
    res = session_.ktlsRecordReceived(source_);  // 0 for close_notify
  }
  if (res == 0) {
    ended_ = true;
    session_.sourceEnded(*this);
  } else if (res == -ENOBUFS) {
    waitingBuffers_ = true;
    session_.host_.waitForBuffers(*this);
  } else if (res == -EINTR || res == -EAGAIN) {
    arm();
  } else {
    session_.sourceFailed(*this, res);
  }
}

void Flow::submitGroup() {
  Session& s = session_;
  SessionHost& host = s.host_;
  GroupOp* op = freeGroups_;
  if (op != nullptr) {
    freeGroups_ = op->nextFree;
  } else {
    groups_.push_back(std::make_unique<GroupOp>(*this, s.mirrors_.size()));
    op = groups_.back().get();
  }
  op->nextFree = nullptr;
  op->length = 0;
  std::fill(op->mirrorMember.begin(), op->mirrorMember.end(), 0);

  uint32_t maxLength = s.listener_->chunkSize;
  TapWriter* tap = s.listener_->tap;
  op->tapMember = tap != nullptr && tap->reserve(s.tap_, static_cast<tap::Direction>(direction_),
                                                 &maxLength, &op->reservation);
  members_.clear();
  relay::GroupMember m;
  m.kind = relay::GroupMember::Kind::Send;
  m.fd = target_.fd_;
  m.msgFlags = MSG_WAITALL | MSG_NOSIGNAL;
  m.completion = &op->primaryDone;
  members_.push_back(m);
  target_.sending_ = true;
  target_.activeSend_ = &op->primaryDone;
  for (size_t i = 0; i < s.mirrors_.size(); ++i) {
    Peer& p = s.mirrors_[i]->peer;
    if (!s.takesFlow(i, *this) || s.mirrors_[i]->state != Session::MirrorState::Open) {
      continue;
    }
    // Never wait for a mirror: a send that does not fit its socket buffer at once comes
    // back short (or -EAGAIN) and the mirror is cut.
    m.fd = p.fd_;
    m.msgFlags = MSG_DONTWAIT | MSG_NOSIGNAL;
    m.completion = &op->mirrorDone[i]->done;
    members_.push_back(m);
    op->mirrorMember[i] = 1;
    ++p.groupSends_;
  }
  if (op->tapMember) {
    relay::GroupMember w;
    w.kind = relay::GroupMember::Kind::Write;
    w.fd = tap->fd();
    w.fileOffset = op->reservation.payloadOffset;
    w.completion = &op->tapDone;
    members_.push_back(w);
  }
  op->pending = 1 + static_cast<uint32_t>(members_.size());
  // The tap member is counted by the tap writer (reserve() -> tapWriteStarted()).
  s.inflight_ += op->pending - (op->tapMember ? 1 : 0);
  receiving_ = true;
  group_ = op;
  host.ring().recvGroup(source_.fd_, maxLength, &op->leaderDone, members_);
}

void Flow::releaseGroup(GroupOp* op) {
  op->nextFree = freeGroups_;
  freeGroups_ = op;
}

namespace {
// Splices per pump: past this a session that always has bytes waiting yields to the
// other completions (its next pump starts from a poll that is ready at once).
constexpr int kSpliceRounds = 8;

// Errors of splice(2) that say this socket or this process can't splice at all (a
// seccomp profile refusing it, a socket type without splice_read), not that the
// connection failed. They consume nothing.
bool spliceRefused(ssize_t err) {
  return err == -EINVAL || err == -ENOSYS || err == -EPERM || err == -EOPNOTSUPP;
}

std::atomic<bool> spliceRefusedLogged{false};
}  // namespace

void Flow::pump() {
  Session& s = session_;
  SessionHost& host = s.host_;
  Sockets& sockets = host.sockets();
  bool dry = false;  // the pipe was empty and the source had nothing
  for (int round = 0; round < kSpliceRounds; ++round) {
    bool moved = false;
    if (!eof_ && pipe_[0] < 0) {
      const int capacity = host.takePipe(pipe_);
      if (capacity <= 0) {
        // No pipe (fd limit): this direction stays on RECV/SEND. Nothing is in flight
        // for it, so the switch loses nothing.
        pipe_[0] = pipe_[1] = -1;
        splice_ = false;
        spliceEligible_ = spliceCapable_ = false;
        arm();
        return;
      }
      pipeCapacity_ = capacity;
    }
    if (!eof_ && piped_ < static_cast<uint32_t>(pipeCapacity_)) {
      const ssize_t n = sockets.splice(source_.fd_, pipe_[1], pipeCapacity_ - piped_);
      if (n > 0) {
        piped_ += static_cast<uint32_t>(n);
        moved = true;
        burst_ += static_cast<uint64_t>(n);
        s.spliceReceived(*this, static_cast<uint32_t>(n));
      } else if (n == 0) {
        eof_ = true;
      } else if (n == -EAGAIN) {
        dry = dry || piped_ == 0;
      } else if (n != -EINTR) {
        // -EAGAIN: nothing to read, or the pipe's slots are full (then it drains below).
        if (piped_ == 0 && spliceRefused(n)) {
          // Nothing was consumed and the pipe is empty: this direction goes on with
          // RECV/SEND and loses nothing.
          if (!spliceRefusedLogged.exchange(true)) {
            GRELAY_LOG_WARN(
                "splice(2) from a socket is refused here (%s): directions "
                "that would splice stay on RECV/SEND",
                strerror(static_cast<int>(-n)));
          }
          releasePipe();
          splice_ = false;
          spliceEligible_ = spliceCapable_ = false;
          arm();
          return;
        }
        s.sourceFailed(*this, static_cast<int32_t>(n));
        return;
      }
    }
    if (piped_ > 0) {
      const ssize_t n = sockets.splice(pipe_[0], target_.fd_, piped_);
      if (n > 0) {
        piped_ -= static_cast<uint32_t>(n);
        moved = true;
        s.spliceSent(*this, static_cast<uint32_t>(n));
      } else if (n == 0 || (n != -EAGAIN && n != -EINTR)) {
        s.peerFailed(target_, n == 0 ? -EPIPE : static_cast<int32_t>(n));
        return;
      }
    }
    if (piped_ == 0 && pipe_[0] >= 0) {
      releasePipe();  // idle sessions hold no pipe
    }
    if (eof_ && piped_ == 0) {
      ended_ = true;
      s.sourceEnded(*this);
      return;
    }
    if (!moved) {
      break;
    }
  }
  if (dry && piped_ == 0) {
    if (burst_ > 0 && burst_ < s.listener_->chunkSize) {
      // A small burst: back to RECV/SEND until the next full chunk.
      splice_ = false;
      arm();
      return;
    }
    // A large burst is over (or, right after the switch, the rest of it is not here
    // yet): wait for the next one on splice.
    burst_ = 0;
  }
  // Wait for whichever side holds things up: bytes in the pipe wait for the target to
  // take them (back-pressure: nothing more is read meanwhile); an empty pipe waits for
  // the source. A poll on a side that is already ready completes at once.
  Peer& peer = piped_ > 0 ? target_ : source_;
  bool& polling = piped_ > 0 ? targetPolling_ : sourcePolling_;
  relay::Completion* done = piped_ > 0 ? static_cast<relay::Completion*>(&targetReady_)
                                       : static_cast<relay::Completion*>(&sourceReady_);
  polling = true;
  ++peer.flowPolls_;
  ++s.inflight_;
  host.ring().pollAdd(peer.fd_, piped_ > 0 ? POLLOUT : POLLIN, done);
}

void Flow::onSourceReady(int32_t res, uint32_t) noexcept {
  sourcePolling_ = false;
  --source_.flowPolls_;
  --session_.inflight_;
  if (session_.closing()) {
    session_.opDone(source_);
    return;
  }
  if (res < 0) {
    session_.sourceFailed(*this, res);
    return;
  }
  pump();
}

void Flow::onTargetReady(int32_t res, uint32_t) noexcept {
  targetPolling_ = false;
  --target_.flowPolls_;
  --session_.inflight_;
  if (session_.closing()) {
    session_.opDone(target_);
    return;
  }
  if (res < 0) {
    session_.peerFailed(target_, res);
    return;
  }
  pump();
}

void Flow::releasePipe() {
  if (pipe_[0] < 0) {
    return;
  }
  session_.host_.givePipe(pipe_, pipeCapacity_, piped_ == 0);
  pipe_[0] = pipe_[1] = -1;
  piped_ = 0;
}

// ---------------------------------------------------------------------------------------
// GroupOp

GroupOp::GroupOp(Flow& f, size_t mirrors) : flow(f), mirrorMember(mirrors, 0) {
  for (size_t i = 0; i < mirrors; ++i) {
    mirrorDone.push_back(std::make_unique<MirrorMember>(*this, i));
  }
}

void GroupOp::completed() {
  if (--pending == 0) {
    flow.releaseGroup(this);
  }
}

void GroupOp::onLeader(int32_t res, uint32_t) noexcept {
  Session& s = flow.session_;
  --s.inflight_;
  flow.receiving_ = false;
  flow.group_ = nullptr;
  TapWriter* tap = s.listener_->tap;
  const auto direction = static_cast<tap::Direction>(flow.direction_);
  if (res > 0 && !s.closing()) {
    length = static_cast<uint32_t>(res);
    if (tapMember) {
      tap->committed(s.tap_, reservation, length, &header);
    } else if (tap != nullptr) {
      tap->dropped(s.tap_, direction, length);
    }
    s.groupReceived(flow, *this);
    completed();
    return;
  }
  if (tapMember) {
    tap->abandoned(s.tap_, reservation);
  }
  if (res == -EIO && flow.source_.tls_ != nullptr && !flow.source_.tlsReceiveUser_ &&
      !s.closing()) {
    res = s.ktlsRecordReceived(flow.source_);  // 0 for close_notify
  }
  if (s.closing()) {
    s.opDone(flow.source_);
  } else if (res == 0) {
    flow.ended_ = true;
    s.sourceEnded(flow);  // FIN goes out once the (cancelled) target member is back
  } else if (res == -ENOBUFS) {
    // The ring's group buffers are at their bound: mainline receives for a moment.
    flow.groupBackoffUntil_ = s.host_.now() + 10'000'000ull;
  } else if (res != -ECANCELED && res != -EAGAIN) {
    s.sourceFailed(flow, res);
  }
  // -EAGAIN (a warning alert was read): the primary member comes back cancelled and
  // re-arms the direction.
  completed();
}

void GroupOp::onPrimary(int32_t res, uint32_t) noexcept {
  Session& s = flow.session_;
  Peer& target = flow.target_;
  --s.inflight_;
  target.sending_ = false;
  target.activeSend_ = nullptr;
  if (s.closing()) {
    s.opDone(target);
  } else if (res == -ECANCELED) {
    // The leader got nothing (EOF, -ENOBUFS...): the target is free again.
    if (target.finWanted_ && !target.finSent_ && target.queue_.empty()) {
      target.sendFin();
    }
    flow.arm();
    s.maybeFinish();
  } else if (res == static_cast<int32_t>(length)) {
    target.unsent_ -= length;
    s.peerSent(target, length);
    if (!s.closing()) {
      if (target.finWanted_ && !target.finSent_ && target.queue_.empty()) {
        target.sendFin();
      }
      flow.arm();
      s.maybeFinish();
    }
  } else {
    // The pages are gone with the group: a short send cannot be completed.
    target.unsent_ -= length;
    s.peerFailed(target, res < 0 ? res : -EPIPE);
  }
  completed();
}

void GroupOp::onMirror(size_t index, int32_t res) {
  Session& s = flow.session_;
  Session::Mirror& m = *s.mirrors_[index];
  --s.inflight_;
  --m.peer.groupSends_;
  if (m.state == Session::MirrorState::Cut) {
    s.opDone(m.peer);  // what it misses was counted as dropped when it was cut
  } else if (res == static_cast<int32_t>(length) || res == -ECANCELED) {
    if (res > 0) {
      s.stats().mirrors[index].sentBytes.add(length);
    }
    Peer& p = m.peer;
    if (p.finWanted_ && !p.finSent_ && p.groupSends_ == 0 && !p.sending_ && p.queue_.empty()) {
      p.sendFin();
    }
    if (s.closing()) {
      s.opDone(p);
    }
  } else {
    const uint32_t sent = res > 0 ? static_cast<uint32_t>(res) : 0;
    s.stats().mirrors[index].sentBytes.add(sent);
    s.stats().mirrors[index].droppedBytes.add(length - sent);
    s.cutMirror(index,
                res >= 0 || res == -EAGAIN
                    ? "fell behind by more than max_lag or its socket send buffer holds (on the "
                      "group path a chunk the buffer cannot take at once is lost to the mirror)"
                    : ("send failed: " + std::string(std::strerror(-res))).c_str());
  }
  completed();
}

void GroupOp::onTap(int32_t res, uint32_t) noexcept {
  Session& s = flow.session_;
  s.listener_->tap->memberDone(s.tap_, length, header, res);
  completed();
}

bool Flow::processCopy(relay::ChunkRef chunk) {
  Session& s = session_;
  relay::UserBufferPool& pool = s.host_.userPool();
  auto waitForRoom = [&]() {
    // Like -ENOBUFS on a receive: stop, keep what we have, go on when buffers return
    // (the host may cut a mirror that holds too many of them).
    copyWaiting_ = true;
    waitingBuffers_ = true;
    s.host_.waitForBuffers(*this);
    return false;
  };
  if (source_.tls_ == nullptr) {
    // relay_path = "copy" on plaintext: the bytes pass through a user buffer, as TLS
    // plaintext would (the baseline the copy path is measured by).
    relay::ChunkRef plain = pool.allocate();
    if (!plain) {
      copyHold_ = std::move(chunk);
      return waitForRoom();
    }
    std::memcpy(plain.mutableData(), chunk.data(), chunk.size());
    plain.get()->length = chunk.size();
    chunk.reset();
    s.deliver(*this, plain);
    return true;
  }
  relay::TlsChannel& tls = *source_.tls_;
  if (chunk) {
    tls.feed(std::move(chunk));
  }
  while (true) {
    if (pool.available() == 0) {
      return waitForRoom();  // the ciphertext stays fed to the channel
    }
    relay::ChunkRef plain;
    switch (tls.read(&plain)) {
      case relay::TlsChannel::ReadStatus::Data:
        s.deliver(*this, plain);
        if (s.closing()) {
          return false;
        }
        continue;
      case relay::TlsChannel::ReadStatus::NeedMore:
        break;
      case relay::TlsChannel::ReadStatus::Closed:
        source_.flushTls();
        ended_ = true;
        s.sourceEnded(*this);
        return false;
      case relay::TlsChannel::ReadStatus::Failed:
        s.host_.listenerTrouble(*s.listener_, "TLS: " + tls.error());
        s.sourceFailed(*this, -EPROTO);
        return false;
    }
    break;
  }
  // Reading may have produced records to send back (alerts, key updates).
  if (source_.tls_->hasOutbound()) {
    source_.flushTls();
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Session

Session::Session(SessionHost& host, ListenerContext& listener, int clientFd)
    : host_(host),
      listener_(&listener),
      client_(*this, Peer::Kind::Client),
      primary_(*this, Peer::Kind::Primary),
      request_(*this, metrics::kRequest, client_, primary_),
      response_(*this, metrics::kResponse, primary_, client_) {
  client_.fd_ = clientFd;
  client_.connected_ = true;
  mirrors_.reserve(cfg().mirrors.size());
  for (size_t i = 0; i < cfg().mirrors.size(); ++i) {
    mirrors_.push_back(std::make_unique<Mirror>(*this, i));
  }
}

Session::~Session() {
  host_.timers().cancel(*this);
  if (listener_->slotQueue != nullptr) {
    listener_->slotQueue->forget(*this);  // (close() has left it already, unless torn down)
  }
  request_.releasePipe();
  response_.releasePipe();
}

void Session::start() {
  stats().connections.inc();
  stats().active.inc();
  counted_ = true;
  started_ = host_.now();
  if (const uint64_t limit = nanos(cfg().max_session_duration); limit > 0) {
    // Within +-10% of the limit, a different point for each session (gRPC's
    // MaxConnectionAge jitter): connections opened together, by a deploy or a failover,
    // are not all reset in the same instant, nor all reconnect in the next.
    uint64_t x = id_ * 0x9e3779b97f4a7c15ull + started_;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    const uint64_t span = limit / 5;
    maxDurationDeadline_ = started_ + limit - span / 2 + x % (span + 1);
  }
  keepAlive(client_.fd_);
  host_.sockets().addresses(client_.fd_, &clientAddress_, &localAddress_);
  activity();
  if (cfg().accept_proxy_protocol) {
    if (!config::admits(cfg().proxy_protocol_from, clientAddress_)) {
      // Its header could claim any client: reset before reading a byte.
      stats().proxyProtocolErrors.inc();
      host_.listenerTrouble(*listener_, "PROXY protocol header from " +
                                            formatAddress(clientAddress_) +
                                            ", a peer outside proxy_protocol_from: reset");
      close(true, false, false, tap::CloseReason::kError);
      return;
    }
    state_ = State::ProxyHeader;
    handshakeDeadline_ = host_.now() + nanos(cfg().connect_timeout);
    rescheduleTimer();
    readProxyHeader();
    return;
  }
  afterProxyHeader();
}

void Session::readProxyHeader() {
  uint8_t buf[kMaxProxyHeader];
  const size_t have = proxyHeader_.size();
  std::memcpy(buf, proxyHeader_.data(), have);
  Sockets& sockets = host_.sockets();
  const ssize_t n = sockets.receiveNow(client_.fd_, buf + have, sizeof(buf) - have, true);
  if (n == -EAGAIN) {
    pollForProxyHeader();
    return;
  }
  if (n == 0 && have == 0) {
    // Connected and closed without a byte: a TCP health check, not a broken header.
    close(false, false, false, tap::CloseReason::kError);
    return;
  }
  if (n <= 0) {
    proxyHeaderFailed(n == 0 ? "the client closed in the middle of it"
                             : describe(static_cast<int32_t>(n)));
    return;
  }
  const ProxyHeaderParse parsed = parseProxyHeader(buf, have + static_cast<size_t>(n));
  if (parsed.status == ProxyHeaderParse::Status::Invalid) {
    proxyHeaderFailed("the client did not send one");
    return;
  }
  // Take only header bytes off the socket: the rest is the client's stream.
  const size_t take = parsed.status == ProxyHeaderParse::Status::Done ? parsed.length - have
                                                                      : static_cast<size_t>(n);
  const ssize_t took = sockets.receiveNow(client_.fd_, buf + have, take, false);
  if (took != static_cast<ssize_t>(take)) {
    proxyHeaderFailed(took < 0 ? describe(static_cast<int32_t>(took)) : "short read");
    return;
  }
  if (parsed.status == ProxyHeaderParse::Status::Incomplete) {
    proxyHeader_.append(reinterpret_cast<const char*>(buf + have), take);
    pollForProxyHeader();
    return;
  }
  std::string().swap(proxyHeader_);
  receivedTlvs_.assign(reinterpret_cast<const char*>(buf) + parsed.tlvOffset, parsed.tlvLength);
  if (parsed.hasAddresses) {
    clientAddress_ = parsed.client;
    localAddress_ = parsed.local;
  }
  afterProxyHeader();
}

void Session::pollForProxyHeader() {
  client_.polling_ = true;
  ++inflight_;
  host_.ring().pollAdd(client_.fd_, POLLIN, &client_.pollDone_);
}

void Session::proxyHeaderPolled(int32_t res) {
  if (handshakeTimedOut_) {
    proxyHeaderFailed("timed out (connect_timeout)");
    return;
  }
  if (res < 0) {
    proxyHeaderFailed(describe(res));
    return;
  }
  readProxyHeader();
}

void Session::proxyHeaderFailed(const std::string& why) {
  stats().proxyProtocolErrors.inc();
  host_.listenerTrouble(*listener_, "PROXY protocol header: " + why);
  close(true, false, false, tap::CloseReason::kError);
}

std::string_view Session::clientServerName() const {
  return client_.tls_ != nullptr ? client_.tls_->serverName() : std::string_view(peekedName_);
}

void Session::forwardServerName(UpstreamPeerName& peer, bool verify) const {
  std::string_view name = clientServerName();
  if (name.empty()) {
    name = findTlv(receivedTlvs_, kTlvAuthority);
  }
  // Only a host name goes into a ClientHello (an authority TLV is any bytes).
  const bool hostName =
      !name.empty() && name.size() <= 253 && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
      });
  if (hostName) {
    peer.sni.assign(name);
    peer.verifyHost = verify ? peer.sni : "";
  }
}

int32_t Session::sendProxyHeader(int fd, config::ProxyProtocol version,
                                 const config::ProxyProtocolTlvs& wanted) const {
  if (version == config::ProxyProtocol::Off) {
    return 0;
  }
  // The send buffer of a socket that just connected is empty and far larger than the
  // header (at most 108 bytes, or about 8 KiB with TLVs passed on), so one non-blocking
  // send takes it whole; anything else is a dead peer.
  const std::string header = outgoingProxyHeader(version, wanted);
  const ssize_t sent = host_.sockets().sendNow(fd, header.data(), header.size());
  if (sent == static_cast<ssize_t>(header.size())) {
    return 0;
  }
  return sent < 0 ? static_cast<int32_t>(sent) : -EAGAIN;
}

std::string Session::outgoingProxyHeader(config::ProxyProtocol version,
                                         const config::ProxyProtocolTlvs& wanted) const {
  if (!wanted.any()) {
    return proxyHeader(version, clientAddress_, localAddress_);
  }
  const relay::TlsChannel* tls = client_.tls_.get();
  ProxyTlvs tlvs;
  if (wanted.alpn) {
    tlvs.alpn = tls != nullptr ? tls->alpn() : std::string_view();
    if (tlvs.alpn.empty()) {
      tlvs.alpn = findTlv(receivedTlvs_, kTlvAlpn);
    }
  }
  if (wanted.authority) {
    tlvs.authority = clientServerName();
    if (tlvs.authority.empty()) {
      tlvs.authority = findTlv(receivedTlvs_, kTlvAuthority);
    }
  }
  tlvs.ssl = wanted.ssl;
  relay::TlsChannel::PeerCertificate cert;
  if (wanted.ssl && tls != nullptr) {
    tlvs.tls = true;
    tlvs.tlsVersion = tls->version();
    tlvs.tlsCipher = tls->cipher();
    cert = tls->peerCertificate();
    tlvs.clientCert = cert.present;
    tlvs.clientCommonName = cert.commonName;
  }
  std::string id;
  if (wanted.unique_id) {
    id = sessionId(host_.workerIndex(), id_);
    tlvs.uniqueId = id;
  }
  std::string passed;
  if (wanted.received) {
    passed =
        passedTlvs(receivedTlvs_, {wanted.alpn, wanted.authority, wanted.ssl, wanted.unique_id});
    tlvs.received = passed;
  }
  tlvs.crc32c = wanted.crc32c;
  return proxyHeader(version, clientAddress_, localAddress_, &tlvs);
}

void Session::afterProxyHeader() {
  // A client turned away before anything connects: counted, logged, reset.
  auto refuse = [this](metrics::Counter& counter, const std::string& why) {
    counter.inc();
    host_.listenerTrouble(*listener_,
                          "client " + formatAddress(clientAddress_) + " " + why + ": reset");
    close(true, false, false, tap::CloseReason::kError);
  };
  if (!config::admits(cfg().allow, clientAddress_)) {
    refuse(stats().denied, "is outside the listener's allow networks");
    return;
  }
  if (listener_->clientRate != nullptr &&
      !listener_->clientRate->admit(clientAddress_, host_.now())) {
    refuse(stats().rejected[metrics::kClientRateLimit],
           "opens connections faster than " + std::to_string(listener_->clientRate->rate()) +
               " a second (max_connection_rate_per_client)");
    return;
  }
  if (listener_->clientLimit != nullptr) {
    if (!listener_->clientLimit->acquire(clientAddress_)) {
      refuse(stats().rejected[metrics::kClientLimit],
             "already has " + std::to_string(listener_->clientLimit->limit()) +
                 " sessions open (max_connections_per_client)");
      return;
    }
    clientCounted_ = true;
  }
  if (listener_->tls == nullptr) {
    if (!listener_->routed.empty()) {
      state_ = State::ClientHello;
      handshakeDeadline_ = host_.now() + nanos(cfg().connect_timeout);
      rescheduleTimer();
      readClientHello();
      return;
    }
    beginSession();
    return;
  }
  // TLS termination: nothing is connected upstream (or mirrored) before the handshake.
  client_.tls_ =
      std::make_unique<relay::TlsChannel>(listener_->tls, client_.fd_, true, host_.userPool());
  if (!client_.tls_->valid()) {
    host_.listenerTrouble(*listener_, "TLS: " + client_.tls_->error());
    close(true, false, false, tap::CloseReason::kError);
    return;
  }
  state_ = State::Handshaking;
  handshakeDeadline_ = host_.now() + nanos(cfg().tls->handshake_timeout);
  rescheduleTimer();
  continueHandshake(client_);
}

void Session::readClientHello() {
  uint8_t buf[kMaxClientHelloPeek];
  Sockets& sockets = host_.sockets();
  const ssize_t n = sockets.receiveNow(client_.fd_, buf, sizeof(buf), true);
  if (n == -EAGAIN && !clientHelloEnded_) {
    pollForClientHello();
    return;
  }
  if (n == 0) {
    // Connected and closed without a byte: a TCP health check, nothing to route.
    close(false, false, false, tap::CloseReason::kError);
    return;
  }
  if (n < 0 && n != -EAGAIN) {
    close(true, false, false, tap::CloseReason::kError);
    return;
  }
  ClientHelloParse parsed = parseClientHello(buf, n > 0 ? static_cast<size_t>(n) : size_t{0});
  if (parsed.status == ClientHelloParse::Status::Incomplete && !clientHelloEnded_) {
    // The poll wakes once the next piece is all there (or at EOF), not at every segment.
    sockets.setReceiveLowWater(client_.fd_, static_cast<int>(parsed.need));
    lowWaterSet_ = true;
    pollForClientHello();
    return;
  }
  // Not TLS, no name, cut short: the listener's own upstream takes it.
  if (parsed.status == ClientHelloParse::Status::Invalid) {
    routeMiss_ = metrics::kRouteNotTls;
  } else if (parsed.status == ClientHelloParse::Status::Incomplete) {
    routeMiss_ = handshakeTimedOut_ ? metrics::kRouteTimeout : metrics::kRouteClosed;
  }
  if (parsed.status == ClientHelloParse::Status::Done) {
    peekedAlpn_ = std::move(parsed.alpn);
  }
  afterClientHello(parsed.status == ClientHelloParse::Status::Done ? parsed.serverName
                                                                   : std::string());
}

void Session::pollForClientHello() {
  client_.polling_ = true;
  ++inflight_;
  host_.ring().pollAdd(client_.fd_, POLLIN | POLLRDHUP, &client_.pollDone_);
}

void Session::clientHelloPolled(int32_t res) {
  if (handshakeTimedOut_) {
    clientHelloEnded_ = true;  // routed by what came in time
  } else if (res < 0) {
    close(true, false, false, tap::CloseReason::kError);
    return;
  } else if ((res & (POLLRDHUP | POLLHUP | POLLERR)) != 0) {
    clientHelloEnded_ = true;  // nothing more will come: route by what there is
  }
  readClientHello();
}

void Session::afterClientHello(std::string serverName) {
  handshakeTimedOut_ = false;  // (an upstream TLS handshake has a deadline of its own)
  if (lowWaterSet_) {
    host_.sockets().setReceiveLowWater(client_.fd_, 1);
    lowWaterSet_ = false;
  }
  peekedName_ = std::move(serverName);
  beginSession();
}

bool Session::chooseRoute() {
  if (listener_->routed.empty()) {
    return true;
  }
  const std::string_view name = clientServerName();
  // Terminated here: the protocol the handshake chose; else those the ClientHello offers.
  std::vector<std::string> chosen;
  if (client_.tls_ != nullptr && !client_.tls_->alpn().empty()) {
    chosen.emplace_back(client_.tls_->alpn());
  }
  const size_t route =
      config::routeFor(*listener_->config, name, client_.tls_ != nullptr ? chosen : peekedAlpn_);
  if (route != config::kNoRoute && route < listener_->routed.size()) {
    listener_ = listener_->routed[route];
    return true;
  }
  stats().routeMisses[routeMiss_].inc();
  if (listener_->upstream == nullptr) {
    host_.listenerTrouble(*listener_, "client " + formatAddress(clientAddress_) + " asked for " +
                                          (name.empty() ? "no server name" : jsonString(name)) +
                                          ", which no route has, and the listener has no "
                                          "upstream: reset");
    close(true, false, false, tap::CloseReason::kError);
    return false;
  }
  return true;
}

void Session::beginSession() {
  state_ = State::Connecting;
  // A DNS move since the accept (during a TLS handshake or a slow PROXY header): nothing
  // is connected yet, so the session connects where the newest routes say.
  if (ListenerContext* newer = host_.newerContext(*listener_)) {
    listener_ = newer;
  }
  if (!chooseRoute()) {
    return;
  }
  routed_ = true;
  UpstreamPool& pool = *listener_->upstream;
  pickServerOrder();
  if (!mirrors_.empty() && pool.wouldWait(serverOrder_)) {
    // It is about to wait for a slot: its mirrors connect when it gets one, so a queue
    // holds no mirror connections and a session the queue resets never reaches them.
    mirrorsDeferred_ = true;
  } else {
    connectMirrors();
  }
  connectPrimary();
}

void Session::pickServerOrder() {
  UpstreamPool& pool = *listener_->upstream;
  const bool bySource = pool.config().balance == config::Balance::Source;
  pool.pickOrder(serverOrder_, host_.now(), bySource ? clientHash(clientAddress_, false) : 0);
  serverAttempt_ = 0;
}

void Session::continueHandshake(Peer& peer) {
  using Step = relay::TlsChannel::Step;
  Step step = peer.tls_->handshake();
  if (step == Step::Done) {
    handshakeDone(peer);
    return;
  }
  if (step == Step::Failed) {
    handshakeFailed(peer, false);
    return;
  }
  peer.polling_ = true;
  ++inflight_;
  host_.ring().pollAdd(peer.fd_, step == Step::WantRead ? POLLIN : POLLOUT, &peer.pollDone_);
}

void Session::handshakeDone(Peer& peer) {
  relay::TlsChannel& tls = *peer.tls_;
  GRELAY_LOG_DEBUG("TLS %s: %s, kernel TLS send %s, receive %s",
                   peer.kind_ == Peer::Kind::Client ? "client" : "upstream", tls.describe().c_str(),
                   tls.ktlsSend() ? "on" : "off", tls.ktlsReceive() ? "on" : "off");
  // Each direction the kernel took is a plain receive or send from now on (the session
  // stays on the worker's zero-copy path for it); the others go through OpenSSL.
  peer.tlsSendUser_ = !tls.ktlsSend();
  peer.tlsReceiveUser_ = !tls.ktlsReceive();
  if (!tls.useMemoryBio(peer.tlsReceiveUser_, peer.tlsSendUser_)) {
    handshakeFailed(peer, false);
    return;
  }
  if (!peer.tlsSendUser_ || !peer.tlsReceiveUser_) {
    stats().ktlsSessions.inc();
  }
  activity();
  if (peer.kind_ == Peer::Kind::Client) {
    stats().tlsHandshakes.inc();
    if (tls.resumed()) {
      stats().tlsResumed.inc();
    }
    beginSession();
  } else {
    if (tls.resumed()) {
      upstreamStats().tlsResumed.inc();
    }
    upstreamReady();
  }
}

void Session::discardUnread(int fd) {
  // OpenSSL stops reading at the message it refuses (a TLS 1.3 client's certificate comes
  // with its CertificateVerify and Finished): closing over those bytes would send a reset
  // right behind the alert, and a client writing its first request meets the reset before
  // it reads the alert ("connection reset" instead of "certificate revoked"). Bounded: a
  // client that keeps sending is reset after all.
  uint8_t scratch[16 * 1024];
  for (size_t taken = 0; taken < 16 * sizeof(scratch);) {
    const ssize_t n = host_.sockets().receiveNow(fd, scratch, sizeof(scratch), false);
    if (n <= 0) {
      return;
    }
    taken += static_cast<size_t>(n);
  }
}

void Session::handshakeFailed(Peer& peer, bool timedOut) {
  if (peer.kind_ == Peer::Kind::Client) {
    // A plaintext client on a TLS port, an old protocol version, a scanner: OpenSSL has
    // sent its alert; close cleanly.
    if (timedOut) {
      stats().tlsHandshakeTimeouts.inc();
    } else {
      stats().tlsHandshakeFailures.inc();
    }
    // Rate-limited with the listener's other trouble: why a client was refused (its
    // certificate revoked or unknown, no SNI match under strict_sni) without a line per
    // scanner.
    host_.listenerTrouble(
        *listener_,
        "TLS: client " + formatAddress(clientAddress_) + ": " +
            (timedOut ? std::string("no handshake within handshake_timeout") : peer.tls_->error()));
    discardUnread(peer.fd_);
    close(false, false, false, tap::CloseReason::kError);
    return;
  }
  // The upstream server's certificate or protocol was refused: like a failed connect,
  // try the pool's next server.
  upstreamStats().tlsFailures.inc();
  if (primary_.tls_->valid()) {
    forgetUpstreamSession(primary_.tls_->handle());
  }
  const config::Address& a = listener_->upstream->server(static_cast<size_t>(server_));
  const std::string why =
      timedOut ? std::string("TLS handshake timed out") : primary_.tls_->error();
  host_.listenerTrouble(*listener_, "TLS: upstream " + a.text + ": " + why);
  upstreamFailed(why);
  releaseServer();
  primary_.tls_.reset();
  host_.sockets().close(primary_.fd_, true);
  primary_.fd_ = -1;
  primary_.connected_ = false;
  server_ = -1;
  state_ = State::Connecting;
  connectPrimary();
}

PeerHealth* Session::mirrorHealth(size_t index) const {
  return index < listener_->mirrorHealth.size() ? listener_->mirrorHealth[index] : nullptr;
}

bool Session::sampled(uint32_t percent) const {
  if (percent >= 100) {
    return true;
  }
  // The same sessions for every mirror with the same percentage, on every worker and
  // across restarts.
  const uint64_t h = clientHash(clientAddress_, true);
  return (h % 100) < percent;
}

void Session::releaseServer() {
  if (upstreamCounted_) {
    listener_->upstream->release(static_cast<uint32_t>(server_));
    upstreamCounted_ = false;
    if (listener_->slotQueue != nullptr) {
      listener_->slotQueue->slotReleased();  // the oldest waiter on this worker takes it
    }
  }
}

void Session::connectPrimary() {
  UpstreamPool& pool = *listener_->upstream;
  const bool newcomer =
      serverAttempt_ == 0 && queueDeadline_ == 0 && pool.config().queue_timeout.count() > 0;
  if ((newcomer && pool.queuedSessions() > 0) ||
      (queued_ && listener_->slotQueue != nullptr && listener_->slotQueue->olderElsewhere(*this))) {
    // Sessions are waiting for a slot already: this one waits with them rather than take
    // the slot one of them is about to (a steady stream of new sessions would otherwise
    // starve the queue); a waiter leaves a slot to one of another worker that has waited
    // longer (it is woken for it).
    fullServers_.assign(serverOrder_.begin(), serverOrder_.end());
    serverAttempt_ = serverOrder_.size();
  }
  while (serverAttempt_ < serverOrder_.size()) {
    const uint32_t index = serverOrder_[serverAttempt_++];
    if (!pool.acquire(index)) {
      if (queueDeadline_ == 0) {
        upstreamStats().serverFull.inc();  // at max_conns: the next server
      }
      fullServers_.push_back(index);
      continue;
    }
    const config::Address& address = pool.server(index);
    int fd = host_.sockets().openStream(address.family());
    if (fd < 0) {
      pool.release(index);
      upstreamStats().connectErrors.inc();
      continue;
    }
    if (const std::optional<config::Address>& source = pool.config().source_address) {
      // Not the server's fault (the address left this host, or a DNS move changed the
      // server's family): counted and logged, the server's health untouched.
      if (const int err = host_.sockets().bindSource(fd, *source); err < 0) {
        host_.sockets().close(fd, false);
        pool.release(index);
        upstreamStats().connectErrors.inc();
        host_.listenerTrouble(
            *listener_, "upstream " + pool.config().name + ": cannot connect to " + address.text +
                            " from source_address " + source->text + ": " + describe(err));
        continue;
      }
    }
    upstreamCounted_ = true;
    leaveQueue();
    keepAlive(fd);
    primary_.fd_ = fd;
    primary_.connecting_ = true;
    server_ = index;
    connectStart_ = host_.now();
    connectDeadline_ = connectStart_ + nanos(connectTimeoutOf(*listener_->upstream));
    connectTimedOut_ = false;
    ++inflight_;
    host_.ring().connect(fd, address.sockaddrPtr(), address.length, &primary_.connectDone_);
    if (mirrorsDeferred_) {
      mirrorsDeferred_ = false;
      connectMirrors();
    }
    rescheduleTimer();
    return;
  }
  if (!fullServers_.empty() && waitForSlot()) {
    return;
  }
  leaveQueue();
  if (!fullServers_.empty() && queueDeadline_ != 0 && host_.now() >= queueDeadline_) {
    host_.listenerTrouble(*listener_, "no server of upstream " + pool.config().name +
                                          " had a free slot (max_conns) within queue_timeout: "
                                          "reset");
  }
  // Every server failed: the client learns it by a reset, as if it had tried itself.
  stats().noUpstream.inc();
  openTap(false);
  close(true, false, true, tap::CloseReason::kConnectFailed);
}

bool Session::waitForSlot() {
  const config::Duration timeout = listener_->upstream->config().queue_timeout;
  if (timeout.count() == 0) {
    return false;
  }
  const uint64_t now = host_.now();
  const bool waitedBefore = queueDeadline_ != 0;
  if (!queued_ && (queueDeadline_ == 0 || now < queueDeadline_) &&
      !listener_->upstream->enterQueue()) {
    host_.listenerTrouble(*listener_, "no server of upstream " +
                                          listener_->upstream->config().name +
                                          " had a free slot (max_conns) and max_queue sessions "
                                          "were waiting already: reset");
    return false;
  }
  if (queueDeadline_ == 0) {
    queueStart_ = now;
    queueDeadline_ = now + nanos(timeout);
    retryDelay_ = kFirstQueueRetry;
    upstreamStats().queued.inc();
  } else if (now >= queueDeadline_) {
    return false;  // (not queued_ here, or leaveQueue() follows)
  }
  // The next pass tries the servers that were full, in the same order; the ones whose
  // connect failed are not tried again (each server at most once per session).
  serverOrder_.swap(fullServers_);
  fullServers_.clear();
  serverAttempt_ = 0;
  if (!queued_) {  // first, or again after a slot's connect failed
    queued_ = true;
    waitStart_ = now;
    upstreamStats().queueing.inc();
    // Waiting again, it no longer tries the server whose connect failed: in line it would
    // hold back sessions behind it that could take that server's slots. It waits aside
    // with its ticket, looking on its own timer and whenever the line's oldest is told to.
    if (listener_->slotQueue != nullptr) {
      if (waitedBefore) {
        listener_->slotQueue->pushAside(*this);
      } else {
        listener_->slotQueue->push(*this);
      }
    }
  }
  if (listener_->slotQueue == nullptr || !listener_->slotQueue->contains(*this) ||
      listener_->slotQueue->isOldest(*this)) {
    retryAt_ = std::min(now + retryDelay_, queueDeadline_);
    retryDelay_ = std::min(retryDelay_ * 2, kMaxQueueRetry);
  } else {
    retryAt_ = queueDeadline_;  // its turn comes when the ones ahead have left
  }
  rescheduleTimer();
  return true;
}

void Session::leaveQueueToMove() {
  SlotQueue* queue = listener_->slotQueue;
  movingInQueue_ = queue != nullptr && queue->contains(*this);
  movingAside_ = queue != nullptr && queue->isAside(*this);
  if (queue != nullptr) {
    queue->forget(*this);  // (the others leave too: nobody to wake)
  }
}

void Session::moveToRoutes(ListenerContext& next, std::shared_ptr<const void> former) {
  ListenerContext& was = *listener_;
  next.upstream->takeWaiter(*was.upstream);
  formerRoutes_.push_back(std::move(former));
  listener_ = &next;
  // The new pool's servers, all of them: the ones passed over or failed were the old
  // pool's.
  pickServerOrder();
  fullServers_.clear();
  if (next.slotQueue != nullptr && was.slotQueue != nullptr) {
    if (movingInQueue_) {
      next.slotQueue->pushMoved(*this, *was.slotQueue);  // the oldest is told to look
    } else if (movingAside_) {
      next.slotQueue->pushAside(*this);
    }
  }
  movingInQueue_ = movingAside_ = false;
}

void Session::lookForSlot() noexcept {
  if (!queued_ || done_) {
    return;
  }
  // A pass from the timer, at the next turn of the loop: the caller may be in the middle
  // of releasing a slot or of leaving the queue.
  retryDelay_ = kFirstQueueRetry;
  retryAt_ = host_.now();
  host_.timers().schedule(*this, retryAt_);
}

void Session::leaveQueue() {
  if (queued_) {
    queued_ = false;
    if (listener_->slotQueue != nullptr) {
      listener_->slotQueue->remove(*this);  // the next one looks at once
    }
    const uint64_t now = host_.now();
    queueNanos_ = now - queueStart_;
    upstreamStats().queueDuration.observe(static_cast<double>(now - waitStart_) / 1e9);
    listener_->upstream->leaveQueue();
    upstreamStats().queueing.dec();
  }
}

void Session::primaryConnected(int32_t res) {
  if (state_ == State::Closing) {
    opDone(primary_);
    return;
  }
  if (res == -ECANCELED && connectTimedOut_) {
    res = -ETIMEDOUT;
  }
  const config::UpstreamConfig& poolConfig = listener_->upstream->config();
  if (res >= 0) {  // (before TLS and any relayed byte)
    res = sendProxyHeader(primary_.fd_, poolConfig.proxy_protocol, poolConfig.proxy_protocol_tlvs);
  }
  if (res < 0) {
    upstreamFailed(describe(res));
    releaseServer();
    host_.sockets().close(primary_.fd_, false);
    primary_.fd_ = -1;
    server_ = -1;
    connectPrimary();
    return;
  }
  connectNanos_ = static_cast<int64_t>(host_.now() - connectStart_);
  upstreamStats().connectDuration.observe(static_cast<double>(connectNanos_) / 1e9);
  lastServer_ = &listener_->upstream->server(static_cast<size_t>(server_));
  primary_.connected_ = true;
  if (listener_->upstreamTls != nullptr) {
    const config::UpstreamConfig& pool = listener_->upstream->config();
    primary_.tls_ = std::make_unique<relay::TlsChannel>(listener_->upstreamTls, primary_.fd_, false,
                                                        host_.userPool());
    UpstreamPeerName peer = upstreamPeerName(pool, pool.servers[static_cast<size_t>(server_)]);
    if (pool.tls.forward_sni) {
      forwardServerName(peer, pool.tls.verify);
    }
    primary_.tls_->setPeerName(peer.sni, peer.verifyHost);
    if (primary_.tls_->valid()) {
      // A session is only resumed with the server, the name sent and the name verified
      // it was made with.
      offerUpstreamSession(primary_.tls_->handle(),
                           lastServer_->text + '\0' + peer.sni + '\0' + peer.verifyHost);
    }
    state_ = State::UpstreamHandshake;
    handshakeTimedOut_ = false;
    handshakeDeadline_ = host_.now() + nanos(connectTimeoutOf(*listener_->upstream));
    rescheduleTimer();
    continueHandshake(primary_);
    return;
  }
  upstreamReady();
}

void Session::upstreamReady() {
  serverConnected(*listener_->upstream, static_cast<uint32_t>(server_));
  openTap(true);
  startRelaying();
}

void Session::upstreamFailed(const std::string& why) {
  upstreamStats().connectErrors.inc();
  if (serverConnectFailed(*listener_->upstream, static_cast<uint32_t>(server_), why, "")) {
    upstreamStats().markedDown.inc();
  }
}

void Session::serverConnected(UpstreamPool& pool, uint32_t server) {
  pool.connectSucceeded(server, host_.now());
  pool.sessionConnected(server);
}

bool Session::serverConnectFailed(UpstreamPool& pool, uint32_t server, const std::string& why,
                                  const std::string& who) {
  pool.sessionConnectFailed(server);
  if (!pool.connectFailed(server, host_.now())) {
    return false;
  }
  const config::UpstreamConfig& uc = pool.config();
  GRELAY_LOG_WARN("%supstream %s: server %s marked down for %lld ms after %u failed connect%s (%s)",
                  who.c_str(), uc.name.c_str(), pool.server(server).text.c_str(),
                  static_cast<long long>(uc.fail_timeout.count()), uc.max_fails,
                  uc.max_fails == 1 ? "" : "s", why.c_str());
  return true;
}

config::Duration Session::connectTimeoutOf(const UpstreamPool& pool) const {
  return pool.config().connect_timeout.value_or(cfg().connect_timeout);
}

void Session::connectMirrors() {
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    Mirror& m = *mirrors_[i];
    const config::MirrorConfig& mc = cfg().mirrors[i];
    if (!sampled(mc.sample_percent)) {
      continue;
    }
    stats().mirrors[i].sessions.inc();
    m.wantsResponses = mc.direction == config::MirrorDirection::Both;
    m.health = mirrorHealth(i);
    m.address = &mc.address;
    std::optional<config::Address> source = mc.source_address;
    if (UpstreamPool* pool =
            i < listener_->mirrorPools.size() ? listener_->mirrorPools[i] : nullptr) {
      // A pool's server, by its balance, health and max_conns; none free: skipped.
      m.health = nullptr;
      m.server = pickMirrorServer(*pool);
      if (m.server < 0) {
        m.state = MirrorState::Cut;
        ++mirrorsCut_;
        stats().mirrors[i].skippedSessions.inc();
        continue;
      }
      m.pool = pool;
      m.address = &pool->server(static_cast<size_t>(m.server));
      source = pool->config().source_address;
    }
    if (m.health != nullptr && m.health->down(host_.now())) {
      // Marked down: this session does without it (its bytes count as dropped), and no
      // connect is spent on a dead host. The first session after fail_timeout probes.
      m.state = MirrorState::Cut;
      ++mirrorsCut_;
      stats().mirrors[i].skippedSessions.inc();
      continue;
    }
    m.state = MirrorState::Connecting;
    int fd = host_.sockets().openStream(m.address->family());
    if (fd < 0) {
      stats().mirrors[i].connectErrors.inc();
      cutMirror(i, ("cannot create socket: " + describe(fd)).c_str());
      continue;
    }
    if (source) {
      if (const int err = host_.sockets().bindSource(fd, *source); err < 0) {
        host_.sockets().close(fd, false);
        stats().mirrors[i].connectErrors.inc();
        cutMirror(i, ("cannot bind source_address " + source->text + ": " + describe(err)).c_str());
        continue;
      }
    }
    keepAlive(fd);
    m.peer.fd_ = fd;
    m.peer.connecting_ = true;
    m.connectStart = host_.now();
    m.connectDeadline = m.connectStart + nanos(m.pool != nullptr ? connectTimeoutOf(*m.pool)
                                                                 : cfg().connect_timeout);
    ++inflight_;
    host_.ring().connect(fd, m.address->sockaddrPtr(), m.address->length, &m.peer.connectDone_);
  }
}

int32_t Session::pickMirrorServer(UpstreamPool& pool) {
  thread_local std::vector<uint32_t> order;  // (the worker's: no allocation per session)
  const bool bySource = pool.config().balance == config::Balance::Source;
  pool.pickOrder(order, host_.now(), bySource ? clientHash(clientAddress_, false) : 0);
  for (const uint32_t server : order) {
    if (!pool.down(server, host_.now()) && pool.acquire(server)) {
      return static_cast<int32_t>(server);
    }
  }
  return -1;
}

void Session::mirrorConnected(size_t index, int32_t res) {
  Mirror& m = *mirrors_[index];
  if (m.state == MirrorState::Cut || (closing() && resetMirrors_)) {
    opDone(m.peer);
    return;
  }
  if (res == -ECANCELED && m.timedOut) {
    res = -ETIMEDOUT;
  }
  PeerHealth* health = m.health;
  const config::MirrorConfig& mc = cfg().mirrors[index];
  if (res >= 0) {  // (one that cannot be sent is a dead mirror: a failed connect)
    res = sendProxyHeader(m.peer.fd_, mc.proxy_protocol, mc.proxy_protocol_tlvs);
  }
  if (res < 0) {
    stats().mirrors[index].connectErrors.inc();
    std::string why = "connect failed: " + describe(res);
    if (m.pool != nullptr &&
        serverConnectFailed(*m.pool, static_cast<uint32_t>(m.server), describe(res),
                            "listener " + cfg().name + ": mirror " + mc.name + ": ")) {
      stats().mirrors[index].markedDown.inc();
    }
    if (health != nullptr && health->connectFailed(host_.now(), mc.max_fails, mc.fail_timeout)) {
      stats().mirrors[index].markedDown.inc();
      GRELAY_LOG_WARN(
          "listener %s: mirror %s (%s) marked down for %lld ms after %u failed connect%s (%s): "
          "sampled sessions skip it until then",
          cfg().name.c_str(), mc.name.c_str(), m.address->text.c_str(),
          static_cast<long long>(mc.fail_timeout.count()), mc.max_fails,
          mc.max_fails == 1 ? "" : "s", describe(res).c_str());
    }
    cutMirror(index, why.c_str());
    return;
  }
  if (health != nullptr) {
    health->connectSucceeded(host_.now());
  }
  if (m.pool != nullptr) {
    serverConnected(*m.pool, static_cast<uint32_t>(m.server));
  }
  m.state = MirrorState::Open;
  m.peer.connected_ = true;
  uint32_t len = 0;
  uint8_t* buf = host_.discardBuffer(&len);
  m.peer.reading_ = true;
  ++inflight_;
  host_.ring().recv(m.peer.fd_, buf, len, &m.peer.discardDone_);
  if (!m.peer.queue_.empty()) {
    m.peer.sendNext();
  } else if (m.peer.finWanted_) {
    m.peer.finishWriting();
    closeMirrorIfDone(index);
  }
}

void Session::openTap(bool withUpstream) {
  TapWriter* tw = listener_->tap;
  if (tw == nullptr || tap_.opened) {
    return;
  }
  tap_.owner = this;
  tap::TapSessionInfo info;
  info.sessionId = id_;
  info.timeNs = tap::tapNowNs();
  info.client = tap::TapAddress::fromSockaddr(reinterpret_cast<const sockaddr*>(&clientAddress_),
                                              sizeof(clientAddress_));
  info.local = tap::TapAddress::fromSockaddr(reinterpret_cast<const sockaddr*>(&localAddress_),
                                             sizeof(localAddress_));
  if (client_.tls_ != nullptr) {
    info.flags |= tap::kSessionTlsTerminated;
  }
  if (withUpstream && server_ >= 0) {
    const config::Address& a = listener_->upstream->server(static_cast<size_t>(server_));
    info.upstream = tap::TapAddress::fromSockaddr(a.sockaddrPtr(), a.length);
  }
  tw->open(tap_, info);
}

void Session::tapWriteFinished() noexcept {
  --inflight_;
  if (closing()) {
    maybeFinish();
  }
}

void Session::startRelaying() {
  state_ = State::Relaying;
  activity();
  for (Flow* flow : {&request_, &response_}) {
    flow->copy_ = host_.pathIndex() == metrics::kCopyPath || flow->source_.tlsReceiveInUserspace();
    // A group's SEND to the target must send it all (MSG_WAITALL): not to a TLS target,
    // whatever encrypts for it (kernel TLS refuses MSG_WAITALL).
    flow->groupCapable_ =
        host_.pathIndex() == metrics::kGroupPath && !flow->copy_ && flow->target_.tls_ == nullptr;
    // A direction whose bytes are encrypted in userspace on the way out is on the copy
    // path too, even though it receives like mainline.
    flow->path_ = flow->copy_ || flow->target_.tlsInUserspace()
                      ? static_cast<uint8_t>(metrics::kCopyPath)
                      : static_cast<uint8_t>(metrics::kMainlinePath);
    // One target and nothing to see the bytes (no mirror takes them, no tap, no TLS in
    // either socket): splice(2) moves them without a copy into userspace.
    flow->spliceEligible_ = listener_->splice && !flow->copy_ && !flow->groupCapable_ &&
                            flow->path_ == metrics::kMainlinePath &&
                            flow->source_.tls_ == nullptr && flow->target_.tls_ == nullptr &&
                            listener_->tap == nullptr;
    updateSplice(*flow);
  }
  request_.arm();
  response_.arm();
  rescheduleTimer();
}

void Session::deliver(Flow& flow, const relay::ChunkRef& chunk) {
  activity();
  const uint32_t n = chunk.size();
  metrics::ListenerStats& st = stats();
  st.receivedBytes[flow.direction_].add(n);
  flow.received_ += n;
  st.chunks[flow.path_].inc();
  flow.target_.enqueue(chunk);
  if (listener_->tap != nullptr) {
    listener_->tap->chunk(tap_, static_cast<tap::Direction>(flow.direction_), chunk);
  }
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    Mirror& m = *mirrors_[i];
    if (m.state == MirrorState::Unsampled ||
        (flow.direction_ == metrics::kResponse && !m.wantsResponses)) {
      continue;
    }
    if (m.state == MirrorState::Cut) {
      st.mirrors[i].droppedBytes.add(n);
      continue;
    }
    if (m.peer.unsent_ + n > cfg().mirrors[i].max_lag) {
      cutMirror(i, "fell behind by more than max_lag");
      st.mirrors[i].droppedBytes.add(n);
      continue;
    }
    m.peer.enqueue(chunk);
  }
}

void Session::spliceReceived(Flow& flow, uint32_t bytes) {
  activity();
  metrics::ListenerStats& st = stats();
  st.receivedBytes[flow.direction_].add(bytes);
  flow.received_ += bytes;
  st.chunks[metrics::kSplicePath].inc();
  // Only a direction whose mirrors are all cut splices: what they miss counts as dropped,
  // as deliver() counts it.
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    if (takesFlow(i, flow)) {
      st.mirrors[i].droppedBytes.add(bytes);
    }
  }
}

void Session::spliceSent(Flow& flow, uint32_t bytes) {
  activity();
  if (flow.target_.kind_ == Peer::Kind::Client) {
    stats().sentClientBytes.add(bytes);
  } else {
    upstreamStats().sentBytes.add(bytes);
  }
}

bool Session::takesFlow(size_t mirror, const Flow& flow) const {
  const Mirror& m = *mirrors_[mirror];
  return m.state != MirrorState::Unsampled &&
         (flow.direction_ == metrics::kRequest || m.wantsResponses);
}

void Session::updateSplice(Flow& flow) {
  bool mirrored = false;
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    mirrored = mirrored || (takesFlow(i, flow) && mirrors_[i]->state != MirrorState::Cut);
  }
  flow.spliceCapable_ = flow.spliceEligible_ && !mirrored;
}

bool Session::groupReady(const Flow& flow) const {
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    const Mirror& m = *mirrors_[i];
    if (!takesFlow(i, flow)) {
      continue;
    }
    if (m.state == MirrorState::Connecting ||
        (m.state == MirrorState::Open && (m.peer.sending_ || !m.peer.queue_.empty()))) {
      return false;
    }
    // A group's send to a mirror must fit its socket buffer at once, and a Unix socket's
    // (not autotuned; net.core.wmem_max, 208 KiB by default) is far below max_lag: its
    // chunks go the mainline way, where max_lag is the budget.
    if (m.state == MirrorState::Open && m.address != nullptr && m.address->isUnix()) {
      return false;
    }
  }
  return true;
}

void Session::groupReceived(Flow& flow, GroupOp& op) {
  activity();
  metrics::ListenerStats& st = stats();
  st.receivedBytes[flow.direction_].add(op.length);
  flow.received_ += op.length;
  st.chunks[metrics::kGroupPath].inc();
  flow.target_.unsent_ += op.length;
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    if (takesFlow(i, flow) && !op.mirrorMember[i]) {
      st.mirrors[i].droppedBytes.add(op.length);  // cut earlier: it misses this chunk too
    }
  }
}

void Session::sourceEnded(Flow& flow) {
  flow.target_.finishWriting();
  if (listener_->tap != nullptr) {
    listener_->tap->end(tap_, static_cast<tap::Direction>(flow.direction_), tap::EndKind::kFin, 0);
  }
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    Mirror& m = *mirrors_[i];
    if (m.state != MirrorState::Connecting && m.state != MirrorState::Open) {
      continue;
    }
    const bool allEnded = request_.ended_ && (!m.wantsResponses || response_.ended_);
    if (allEnded) {
      m.peer.finishWriting();
    }
  }
  maybeFinish();
}

void Session::peerSent(Peer& peer, uint32_t bytes) {
  activity();
  const uint64_t low = listener_->chunkSize;
  switch (peer.kind_) {
    case Peer::Kind::Client:
      stats().sentClientBytes.add(bytes);
      if ((response_.paused_ && client_.unsent_ <= low) ||
          (response_.waitingTarget_ && client_.queue_.empty())) {
        response_.waitingTarget_ = false;
        response_.arm();
      }
      break;
    case Peer::Kind::Primary:
      upstreamStats().sentBytes.add(bytes);
      if ((request_.paused_ && primary_.unsent_ <= low) ||
          (request_.waitingTarget_ && primary_.queue_.empty())) {
        request_.waitingTarget_ = false;
        request_.arm();
      }
      break;
    case Peer::Kind::Mirror:
      stats().mirrors[peer.mirrorIndex_].sentBytes.add(bytes);
      break;
  }
}

void Session::peerFailed(Peer& peer, int32_t err) {
  GRELAY_LOG_DEBUG("session %llu: send to the %s failed: %s", static_cast<unsigned long long>(id_),
                   peer.kind_ == Peer::Kind::Client    ? "client"
                   : peer.kind_ == Peer::Kind::Primary ? "upstream"
                                                       : "mirror",
                   describe(err).c_str());
  if (peer.kind_ == Peer::Kind::Mirror) {
    cutMirror(peer.mirrorIndex_, ("send failed: " + describe(err)).c_str());
    return;
  }
  // The peer is gone (EPIPE, ECONNRESET): the other side learns it by a reset.
  stats().resets.inc();
  close(true, true, true, tap::CloseReason::kError);
}

int Session::ktlsRecordReceived(Peer& source) {
  // Kernel TLS hands a record that is not application data only to a recvmsg that asks
  // for its type; the receive that met it failed with EIO. Read it and act on it.
  uint8_t type = 0;
  uint8_t body[relay::kMaxTlsRecord];  // all of it: a partly read record would come back
  const int n = host_.sockets().readTlsRecord(source.fd_, &type, body, sizeof(body));
  if (n == -EAGAIN) {
    return -EAGAIN;
  }
  const char* who = source.kind_ == Peer::Kind::Client ? "the client" : "the upstream";
  if (n < 0) {
    host_.listenerTrouble(*listener_, std::string("TLS: reading a TLS record of ") + who +
                                          " that is not data failed: " + strerror(-n));
    return n;
  }
  std::string what;
  const int res = relay::ktlsControlRecord(type, body, static_cast<size_t>(n), &what);
  if (res != 0) {
    host_.listenerTrouble(*listener_, std::string("TLS: ") + who + " sent " + what +
                                          (res == -EAGAIN ? " (ignored)" : ": session reset"));
  }
  return res;
}

void Session::sourceFailed(Flow& flow, int32_t err) {
  GRELAY_LOG_DEBUG("session %llu: receive from the %s failed: %s",
                   static_cast<unsigned long long>(id_), &flow == &request_ ? "client" : "upstream",
                   describe(err).c_str());
  // A reset (or any receive error) on one side resets every other connection; the
  // failed socket itself is closed with RST too, so nothing lingers in FIN_WAIT.
  stats().resets.inc();
  if (listener_->tap != nullptr) {
    listener_->tap->end(tap_, static_cast<tap::Direction>(flow.direction_), tap::EndKind::kReset,
                        err);
  }
  close(true, true, true, tap::CloseReason::kError);
}

void Session::cutMirror(size_t index, const char* why) {
  Mirror& m = *mirrors_[index];
  if (m.state != MirrorState::Connecting && m.state != MirrorState::Open) {
    return;
  }
  m.state = MirrorState::Cut;
  ++mirrorsCut_;
  metrics::MirrorStats& ms = stats().mirrors[index];
  ms.cuts.inc();
  ms.droppedBytes.add(m.peer.unsent_);
  host_.mirrorTrouble(*listener_, index, why);
  m.peer.failed_ = true;
  cancelPeer(m.peer);
  m.peer.dropQueue();
  closeMirrorIfDone(index);
  if (state_ == State::Relaying) {
    // Nothing else may need these bytes now: the next full chunk can switch to splice.
    updateSplice(request_);
    updateSplice(response_);
  }
  maybeFinish();
}

void Session::cancelPeer(Peer& peer) {
  relay::Ring& ring = host_.ring();
  if (peer.connecting_) {
    ring.cancel(&peer.connectDone_, nullptr);
  }
  if (peer.sending_ && peer.activeSend_ != nullptr) {
    ring.cancel(peer.activeSend_, nullptr);
  }
  if (peer.reading_) {
    ring.cancel(&peer.discardDone_, nullptr);
  }
  if (peer.polling_) {
    ring.cancel(&peer.pollDone_, nullptr);
  }
}

void Session::opDone(Peer& peer) {
  if (peer.kind_ == Peer::Kind::Mirror) {
    closeMirrorIfDone(peer.mirrorIndex_);
  } else if (closing()) {
    closePeerIfIdle(peer, peer.kind_ == Peer::Kind::Client ? resetClient_ : resetPrimary_);
  }
  maybeFinish();
}

void Session::closePeerIfIdle(Peer& peer, bool reset) {
  if (peer.fd_ >= 0 && peer.idle()) {
    host_.sockets().close(peer.fd_, reset);
    peer.fd_ = -1;
    peer.connected_ = false;
    peer.dropQueue();
  }
}

void Session::closeMirrorIfDone(size_t index) {
  Mirror& m = *mirrors_[index];
  Peer& p = m.peer;
  if (p.fd_ < 0) {
    return;
  }
  if (m.state == MirrorState::Cut) {
    if (p.idle()) {
      host_.sockets().close(p.fd_, true);
      p.fd_ = -1;
      p.dropQueue();
    }
    return;
  }
  if (!closing()) {
    return;
  }
  // The primary side is done: a mirror may still drain what it was given, then FIN.
  if (p.connected_ && p.drained() && p.finSent_) {
    if (p.reading_) {
      host_.ring().cancel(&p.discardDone_, nullptr);
      return;
    }
    host_.sockets().close(p.fd_, resetMirrors_);
    p.fd_ = -1;
  }
}

void Session::maybeFinish() {
  if (state_ == State::Relaying && request_.ended_ && response_.ended_ && client_.finSent_ &&
      primary_.finSent_ && client_.drained() && primary_.drained()) {
    close(false, false, false, tap::CloseReason::kNormal);
    return;
  }
  if (state_ != State::Closing || inflight_ != 0 || done_) {
    return;
  }
  // Every request has completed: nothing refers to this session any more.
  closePeerIfIdle(client_, resetClient_);
  closePeerIfIdle(primary_, resetPrimary_);
  for (auto& m : mirrors_) {
    if (m->peer.fd_ >= 0) {
      host_.sockets().close(m->peer.fd_, resetMirrors_ || m->state == MirrorState::Cut);
      m->peer.fd_ = -1;
    }
    m->peer.dropQueue();
    if (m->pool != nullptr && m->server >= 0) {
      m->pool->release(static_cast<uint32_t>(m->server));
      m->server = -1;
    }
  }
  releaseServer();
  if (clientCounted_) {
    listener_->clientLimit->release(clientAddress_);
    clientCounted_ = false;
  }
  done_ = true;
  host_.timers().cancel(*this);
  if (listener_->accessLog != nullptr) {
    writeAccessLog();
  }
  // The host frees the session's admission slot first, so that a client that sees the
  // gauge drop is never rejected for a session that is already gone. The session itself
  // is deleted only after this dispatch round.
  host_.sessionDone(*this);
  if (counted_) {
    // Observed first: whoever sees the gauge drop sees the session's length too.
    stats().sessionDuration.observe(static_cast<double>(host_.now() - started_) / 1e9);
    stats().active.dec();
  }
}

void Session::keepAlive(int fd) {
  const uint64_t ms = static_cast<uint64_t>(cfg().tcp_keepalive.count());
  if (ms > 0) {
    host_.sockets().setKeepAlive(fd, static_cast<uint32_t>((ms + 999) / 1000));
  }
}

void Session::writeAccessLog() {
  AccessRecord r;
  r.endUnixNanos = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  r.listener = &cfg().name;
  r.worker = host_.workerIndex();
  r.session = id_;
  r.client = clientAddress_;
  if (routed_) {
    r.upstream = &listener_->upstream->config().name;
  }
  r.server = lastServer_ != nullptr ? &lastServer_->text : nullptr;
  const uint64_t now = host_.now();
  r.durationNanos = now - started_;
  r.queueNanos = queueNanos_;
  r.connectNanos = connectNanos_;
  r.requestBytes = request_.received_;
  r.responseBytes = response_.received_;
  r.end = tap::toString(closeReason_);  // the tap's close reasons, by the same names
  r.reset = resetClient_;
  r.tls = cfg().tls.has_value();
  std::string clientCert;
  std::string offered;
  r.sni = clientServerName();  // known once the ClientHello was read, even if it failed
  if (client_.tls_ != nullptr) {
    r.alpn = client_.tls_->alpn();
    if (client_.tls_->established()) {
      r.tlsVersion = client_.tls_->version();
      r.tlsCipher = client_.tls_->cipher();
    }
    relay::TlsChannel::PeerCertificate cert = client_.tls_->peerCertificate();
    if (cert.present) {
      clientCert = std::move(cert.subject);
      r.clientCert = &clientCert;
    }
  } else {
    for (const std::string& protocol : peekedAlpn_) {  // as nginx's $ssl_preread_alpn_protocols
      offered += (offered.empty() ? "" : ",") + protocol;
    }
    r.alpn = offered;
  }
  for (const auto& m : mirrors_) {
    r.mirrors += m->state != MirrorState::Unsampled ? 1 : 0;
  }
  r.mirrorsCut = mirrorsCut_;
  listener_->accessLog->add(r, now);
}

void Session::close(bool resetClient, bool resetPrimary, bool resetMirrors,
                    tap::CloseReason reason) {
  resetClient_ = resetClient_ || resetClient;
  resetPrimary_ = resetPrimary_ || resetPrimary;
  resetMirrors_ = resetMirrors_ || resetMirrors;
  const bool wasClosing = state_ == State::Closing;
  leaveQueue();
  if (!wasClosing) {
    closeStart_ = host_.now();
    closeReason_ = reason;
    if (TapWriter* tw = listener_->tap; tw != nullptr) {
      const tap::EndKind end = resetClient_ ? tap::EndKind::kReset : tap::EndKind::kFin;
      tw->end(tap_, tap::Direction::kRequest, end, 0);
      tw->end(tap_, tap::Direction::kResponse, end, 0);
      tw->close(tap_, reason, 0);
    }
  }
  state_ = State::Closing;
  relay::Ring& ring = host_.ring();
  for (Flow* flow : {&request_, &response_}) {
    if (flow->receiving_) {
      // A group is cancelled through its leader: unissued members then complete with
      // -ECANCELED too.
      ring.cancel(flow->group_ != nullptr
                      ? static_cast<relay::Completion*>(&flow->group_->leaderDone)
                      : &flow->recvDone_,
                  nullptr);
    }
    if (flow->waitingBuffers_) {
      flow->waitingBuffers_ = false;
      host_.cancelWaitForBuffers(*flow);
    }
    flow->copyHold_.reset();
    if (flow->sourcePolling_) {
      ring.cancel(&flow->sourceReady_, nullptr);
    }
    if (flow->targetPolling_) {
      ring.cancel(&flow->targetReady_, nullptr);
    }
    // What a pipe still holds goes with it, like a queue a reset drops (splice is
    // synchronous: no request refers to the pipe).
    flow->releasePipe();
  }
  for (Peer* peer : {&client_, &primary_}) {
    if (peer->waitingBuffers_) {
      peer->waitingBuffers_ = false;
      host_.cancelWaitForBuffers(*peer);
    }
  }
  if (!wasClosing || resetClient || resetPrimary) {
    cancelPeer(client_);
    cancelPeer(primary_);
    closePeerIfIdle(client_, resetClient_);
    closePeerIfIdle(primary_, resetPrimary_);
  }
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    Mirror& m = *mirrors_[i];
    if (m.state != MirrorState::Connecting && m.state != MirrorState::Open) {
      continue;
    }
    if (resetMirrors_) {
      // The session was reset: mirrors get a reset too, without counting a cut.
      m.state = MirrorState::Cut;
      m.peer.failed_ = true;
      cancelPeer(m.peer);
      m.peer.dropQueue();
    } else {
      m.peer.finishWriting();
    }
    closeMirrorIfDone(i);
  }
  rescheduleTimer();
  maybeFinish();
}

void Session::abort() {
  close(true, true, true, tap::CloseReason::kShutdown);
}

size_t Session::mirrorHoldingMostAlone(size_t* mirror) const {
  // A chunk still queued toward the client or the primary stays held whatever a mirror
  // does: cutting a mirror that is no further behind than the relay itself frees nothing.
  auto relayNeeds = [this](const relay::Chunk* chunk) {
    for (const Peer* p : {&client_, &primary_}) {
      for (const PendingSend& s : p->queue_) {
        if (s.chunk.get() == chunk) {
          return true;
        }
      }
      for (const relay::ChunkRef& r : p->tlsBacklog_) {
        if (r.get() == chunk) {
          return true;
        }
      }
    }
    return false;
  };
  size_t best = 0;
  for (size_t i = 0; i < mirrors_.size(); ++i) {
    const Mirror& m = *mirrors_[i];
    if ((m.state != MirrorState::Open && m.state != MirrorState::Connecting) ||
        m.peer.queue_.size() <= best) {
      continue;
    }
    size_t alone = 0;
    for (const PendingSend& s : m.peer.queue_) {
      alone += relayNeeds(s.chunk.get()) ? 0 : 1;
    }
    if (alone > best) {
      best = alone;
      *mirror = i;
    }
  }
  return best;
}

void Session::onTimer(uint64_t now) noexcept {
  if (done_) {
    return;
  }
  relay::Ring& ring = host_.ring();
  if (state_ == State::ClientHello && now >= handshakeDeadline_ && !handshakeTimedOut_) {
    handshakeTimedOut_ = true;
    if (client_.polling_) {
      ring.cancel(&client_.pollDone_, nullptr);  // clientHelloPolled routes by what came
    }
  }
  if (state_ == State::ProxyHeader && now >= handshakeDeadline_ && !handshakeTimedOut_) {
    handshakeTimedOut_ = true;
    if (client_.polling_) {
      ring.cancel(&client_.pollDone_, nullptr);  // proxyHeaderPolled fails the session
    } else {
      proxyHeaderFailed("timed out (connect_timeout)");
    }
    if (done_) {
      return;
    }
  }
  if ((state_ == State::Handshaking || state_ == State::UpstreamHandshake) &&
      now >= handshakeDeadline_ && !handshakeTimedOut_) {
    Peer& peer = state_ == State::Handshaking ? client_ : primary_;
    if (!handshakeTimedOut_) {
      handshakeTimedOut_ = true;
      if (peer.polling_) {
        ring.cancel(&peer.pollDone_, nullptr);  // onPoll fails the handshake
      } else {
        handshakeFailed(peer, true);
        if (done_) {
          return;
        }
      }
    }
  }
  if (primary_.connecting_ && !connectTimedOut_ && now >= connectDeadline_) {
    connectTimedOut_ = true;
    ring.cancel(&primary_.connectDone_, nullptr);
  }
  if (queued_ && now >= retryAt_) {
    connectPrimary();  // another pass over the servers that were full
    if (done_) {
      return;
    }
  }
  for (auto& m : mirrors_) {
    if (m->peer.connecting_ && !m->timedOut && now >= m->connectDeadline) {
      m->timedOut = true;
      ring.cancel(&m->peer.connectDone_, nullptr);
    }
  }
  const uint64_t idleSince =
      state_ == State::Closing ? std::max(lastActivity_, closeStart_) : lastActivity_;
  if (state_ != State::Closing && maxDurationDeadline_ != 0 && now >= maxDurationDeadline_) {
    // Reset, not ended: bytes still on their way are not delivered, and a FIN would pass
    // a cut stream off as a whole one.
    stats().maxDurations.inc();
    close(true, true, false, tap::CloseReason::kMaxDuration);
    if (done_) {
      return;
    }
  }
  if (now >= idleSince + nanos(cfg().idle_timeout)) {
    if (state_ == State::Closing) {
      // Only mirrors that stopped reading keep a finished session: cut them.
      for (size_t i = 0; i < mirrors_.size(); ++i) {
        cutMirror(i, "did not drain before idle_timeout");
      }
    } else {
      stats().idleTimeouts.inc();
      close(false, false, false, tap::CloseReason::kIdleTimeout);
    }
    if (done_) {
      return;
    }
  }
  rescheduleTimer();
}

void Session::rescheduleTimer() {
  if (done_) {
    return;
  }
  if (state_ == State::Closing) {
    // Only mirrors still draining what they were given need a deadline now.
    bool mirrorOpen = false;
    for (auto& m : mirrors_) {
      mirrorOpen =
          mirrorOpen || m->state == MirrorState::Open || m->state == MirrorState::Connecting;
    }
    if (!mirrorOpen) {
      host_.timers().cancel(*this);
      return;
    }
    uint64_t next = std::max(lastActivity_, closeStart_) + nanos(cfg().idle_timeout);
    // A mirror still connecting (a blackholed host) gets its connect_timeout, not the
    // idle_timeout: the finished session would otherwise hold its slot, sockets and the
    // mirror's queued bytes for an hour.
    for (auto& m : mirrors_) {
      if (m->peer.connecting_ && !m->timedOut) {
        next = std::min(next, m->connectDeadline);
      }
    }
    host_.timers().schedule(*this, next);
    return;
  }
  uint64_t next = lastActivity_ + nanos(cfg().idle_timeout);
  if (maxDurationDeadline_ != 0) {
    next = std::min(next, maxDurationDeadline_);
  }
  if ((state_ == State::ProxyHeader || state_ == State::ClientHello ||
       state_ == State::Handshaking || state_ == State::UpstreamHandshake) &&
      !handshakeTimedOut_) {
    next = std::min(next, handshakeDeadline_);
  }
  if (primary_.connecting_ && !connectTimedOut_) {
    next = std::min(next, connectDeadline_);
  }
  if (queued_) {
    next = std::min(next, retryAt_);
  }
  for (auto& m : mirrors_) {
    if (m->peer.connecting_ && !m->timedOut) {
      next = std::min(next, m->connectDeadline);
    }
  }
  host_.timers().schedule(*this, next);
}

}  // namespace grelay::proxy
