// A session: one client connection, its primary upstream connection, its mirror
// connections and its tap stream, relayed in both directions.
//
// Two Flows move bytes: request (client -> primary, mirrors, tap) and response
// (primary -> client, mirrors with direction "both", tap). A Flow receives a chunk from
// its source and hands the same buffer to every sink; each Peer sends its queue with one
// send in flight. On the mainline path a Flow with a single target (no mirror takes it, no
// tap, no TLS) switches to splice(2) through a pipe while its source sends in bursts (see
// Flow::pump). Rules kept here, whatever the relay path:
//  - back-pressure: a Flow stops receiving while its primary sink has >= 2 chunks unsent;
//  - a mirror never slows the primary: past max_lag unsent bytes it is cut (closed with
//    RST, counted), and connect failures only cut that mirror;
//  - half-close: EOF on a source becomes shutdown(SHUT_WR) on its sinks once their queues
//    drain; a reset (or a send error) on either side resets the other;
//  - teardown cancels the session's own requests and frees the session only when every
//    request it submitted has completed.
#pragma once

#include <netinet/in.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"
#include "proxy/access_log.h"
#include "proxy/client_limiter.h"
#include "proxy/slot_queue.h"
#include "proxy/sockets.h"
#include "proxy/tap_writer.h"
#include "proxy/timer.h"
#include "proxy/tls_context.h"
#include "proxy/upstream.h"
#include "relay/buffer.h"
#include "relay/completion.h"
#include "relay/ring.h"
#include "relay/tls_channel.h"

namespace grelay::proxy {

class Session;
class TapStream;

// Something stopped for lack of buffers (the provided-buffer ring or the copy path's user
// buffers) and resumed by the host when buffers come back (FIFO).
class BufferWaiter {
public:
  virtual void resumeAfterBuffers() noexcept = 0;
  BufferWaiter* nextWaiting_ = nullptr;
  bool waitingBuffers_ = false;

protected:
  ~BufferWaiter() = default;
};

// What a session needs from its worker (a fake in unit tests).
class SessionHost {
public:
  virtual relay::Ring& ring() = 0;
  virtual Sockets& sockets() = 0;
  virtual relay::ProvidedBufferPool& pool() = 0;
  // User buffers for the copy path (TLS plaintext and ciphertext).
  virtual relay::UserBufferPool& userPool() = 0;
  virtual TimerQueue& timers() = 0;
  virtual uint64_t now() = 0;  // monotonic ns, cached per loop iteration
  // Out of buffers: call waiter.resumeAfterBuffers() when buffers come back.
  virtual void waitForBuffers(BufferWaiter& waiter) = 0;
  virtual void cancelWaitForBuffers(BufferWaiter& waiter) = 0;
  // A client or primary let go of chunks: any of them a mirror still holds is now held by
  // mirrors alone (what buffer pressure may cut a mirror for).
  virtual void relayReleasedChunks() = 0;
  // The session finished; the host deletes it after the current completion returns.
  virtual void sessionDone(Session& session) = 0;
  // Rate-limited logging of mirror trouble (once per mirror and minute).
  virtual void mirrorTrouble(const struct ListenerContext& listener, size_t mirrorIndex,
                             const std::string& what) = 0;
  // Where mirrors' responses are received and dropped (contents never read).
  virtual uint8_t* discardBuffer(uint32_t* length) = 0;
  virtual uint8_t pathIndex() const = 0;  // metrics::PathIndex of this worker's relay path
  virtual uint32_t workerIndex() const = 0;
  // Rate-limited logging of a listener's connection trouble: TLS, PROXY protocol headers
  // (once per listener and minute; `what` starts with its topic, e.g. "TLS: ").
  virtual void listenerTrouble(const struct ListenerContext& listener, const std::string& what) = 0;
  // Splice: an empty pipe (fds[0] reads, fds[1] writes) from the worker's pool or a new one;
  // returns the bytes it holds, or -errno (fd limit).
  virtual int takePipe(int fds[2]) = 0;
  // Hands a pipe back: an empty one goes back to the pool, one holding bytes is closed.
  virtual void givePipe(const int fds[2], int capacity, bool empty) = 0;
  // The context of `current`'s listener in the newest routes, when `current` belongs to
  // older ones (a DNS move came since): the calling session moves there, and the host
  // counts it there from now on. nullptr when `current` is the newest.
  virtual struct ListenerContext* newerContext(struct ListenerContext& current) = 0;

protected:
  ~SessionHost() = default;
};

struct WorkerRoutes;

// Per-listener state a worker keeps and its sessions share.
struct ListenerContext {
  const config::ListenerConfig* config = nullptr;
  size_t index = 0;                // the listener's, in the configuration
  WorkerRoutes* routes = nullptr;  // the worker's routes this context belongs to (if any)
  UpstreamPool* upstream = nullptr;
  size_t upstreamIndex = 0;  // of `upstream` in the configuration
  // The sessions' route: 0 = the listener's upstream, r + 1 = config->routes[r]
  // (ListenerStats::upstreams).
  size_t upstreamUse = 0;
  // The listener's own context: the contexts of its routes, by route (in the same
  // WorkerRoutes). Empty in those contexts.
  std::vector<ListenerContext*> routed;
  metrics::ListenerStats* stats = nullptr;
  TapWriter* tap = nullptr;                     // this worker's tap of the listener, if it has one
  AccessLog* accessLog = nullptr;               // this worker's access log of the listener
  SSL_CTX* tls = nullptr;                       // TLS termination on this listener
  SSL_CTX* upstreamTls = nullptr;               // TLS toward the upstream pool
  std::atomic<int64_t>* connections = nullptr;  // the listener's open sessions (all workers)
  ClientLimiter* clientLimit = nullptr;         // max_connections_per_client (all workers)
  ClientRateLimiter* clientRate = nullptr;      // max_connection_rate_per_client (all workers)
  SlotQueue* slotQueue = nullptr;               // this worker's waiters for the upstream's slots
  std::vector<PeerHealth*> mirrorHealth;        // [mirror], shared by all workers (may be empty)
  std::vector<UpstreamPool*> mirrorPools;       // [mirror]: the pool of a mirror with `upstream`
  uint32_t chunkSize = 64 * 1024;
  bool splice = false;  // single-target directions may splice ([server] splice, mainline path)
};

struct PendingSend {
  relay::ChunkRef chunk;
  uint32_t offset = 0;
  bool packed = false;  // a mirror's own buffer of copied small chunks (more may be added)
};

// One socket of a session and its send side.
class Peer final : public BufferWaiter {
public:
  enum class Kind : uint8_t { Client, Primary, Mirror };

  Peer(Session& session, Kind kind, size_t mirrorIndex = 0);

  // Relay bytes for this peer (encrypted first if the peer speaks TLS in userspace).
  void enqueue(relay::ChunkRef chunk);
  // Bytes exactly as they go on the wire.
  void enqueueWire(relay::ChunkRef chunk);
  // Sends FIN (after close_notify on TLS) once everything queued is sent.
  void finishWriting();
  void dropQueue();
  // Moves ciphertext the TLS channel produced into the send queue.
  void flushTls();
  // TLS in userspace: encrypts what waits for buffers (then close_notify and FIN if due).
  void resumeAfterBuffers() noexcept override;

  // No request of ours refers to the socket (a group member not yet issued would look the
  // fd up when it is: the fd must stay ours until then).
  bool idle() const {
    return !sending_ && !connecting_ && !reading_ && !polling_ && groupSends_ == 0 &&
           flowPolls_ == 0;
  }
  // TLS records this peer sends are made by OpenSSL (copy path), not by kernel TLS.
  bool tlsInUserspace() const { return tls_ != nullptr && tlsSendUser_; }
  // What this peer sends must be decrypted by OpenSSL first.
  bool tlsReceiveInUserspace() const { return tls_ != nullptr && tlsReceiveUser_; }
  bool ktlsSend() const { return tls_ != nullptr && !tlsSendUser_; }
  // Kernel TLS refuses MSG_WAITALL (EOPNOTSUPP): short sends are continued here anyway.
  int sendFlags() const { return ktlsSend() ? MSG_NOSIGNAL : MSG_NOSIGNAL | MSG_WAITALL; }
  bool drained() const { return queue_.empty() && !sending_; }

  Session& session_;
  const Kind kind_;
  const size_t mirrorIndex_;
  int fd_ = -1;
  bool connected_ = false;
  bool connecting_ = false;
  bool sending_ = false;
  bool reading_ = false;                     // mirrors: discarding their responses
  bool polling_ = false;                     // TLS handshake waiting for readiness
  uint32_t groupSends_ = 0;                  // mirrors: group members sending to this socket
  uint32_t flowPolls_ = 0;                   // splicing flows waiting for this socket
  relay::Completion* activeSend_ = nullptr;  // the send in flight (ours or a group member)
  bool finWanted_ = false;
  bool finSent_ = false;
  bool failed_ = false;
  std::unique_ptr<relay::TlsChannel> tls_;
  bool tlsSendUser_ = false;     // OpenSSL encrypts what we send (else kernel TLS does)
  bool tlsReceiveUser_ = false;  // OpenSSL decrypts what we receive (else kernel TLS does)
  bool closeNotifySent_ = false;
  std::deque<relay::ChunkRef> tlsBacklog_;  // plaintext waiting for room to be encrypted
  uint64_t unsent_ = 0;                     // bytes queued, including the send in flight
  std::deque<PendingSend> queue_;

  void onSend(int32_t res, uint32_t flags) noexcept;
  void onConnect(int32_t res, uint32_t flags) noexcept;
  void onDiscard(int32_t res, uint32_t flags) noexcept;
  void onPoll(int32_t res, uint32_t flags) noexcept;
  relay::BoundCompletion<Peer, &Peer::onSend> sendDone_{*this};
  relay::BoundCompletion<Peer, &Peer::onConnect> connectDone_{*this};
  relay::BoundCompletion<Peer, &Peer::onDiscard> discardDone_{*this};
  relay::BoundCompletion<Peer, &Peer::onPoll> pollDone_{*this};

  void sendNext();
  void sendFin();
  void releasedChunks();
  bool encrypt(const relay::ChunkRef& chunk);
  bool pack(const relay::ChunkRef& chunk);
  // close_notify and FIN once everything before them is out (or queued).
  void maybeFinish();
};

// One direction of a session.
class Flow;

// One chunk on the group path: a RECV leader into a group kernel buffer and its members
// (SEND to the primary and to each mirror, WRITE to the tap), in flight together.
struct GroupOp {
  GroupOp(Flow& flow, size_t mirrors);
  void onLeader(int32_t res, uint32_t flags) noexcept;
  void onPrimary(int32_t res, uint32_t flags) noexcept;
  void onTap(int32_t res, uint32_t flags) noexcept;
  void onMirror(size_t index, int32_t res);
  void completed();

  struct MirrorMember {
    MirrorMember(GroupOp& o, size_t i) : op(o), index(i), done(*this) {}
    void onDone(int32_t res, uint32_t) noexcept { op.onMirror(index, res); }
    GroupOp& op;
    size_t index;
    relay::BoundCompletion<MirrorMember, &MirrorMember::onDone> done;
  };

  Flow& flow;
  uint32_t length = 0;   // what the leader received
  uint32_t pending = 0;  // CQEs still to come
  bool tapMember = false;
  std::vector<uint8_t> mirrorMember;  // by mirror index: 1 = a member of this group
  tap::TapReservation reservation;
  tap::TapRecord header;
  relay::BoundCompletion<GroupOp, &GroupOp::onLeader> leaderDone{*this};
  relay::BoundCompletion<GroupOp, &GroupOp::onPrimary> primaryDone{*this};
  relay::BoundCompletion<GroupOp, &GroupOp::onTap> tapDone{*this};
  std::vector<std::unique_ptr<MirrorMember>> mirrorDone;
  GroupOp* nextFree = nullptr;
};

class Flow final : public BufferWaiter {
public:
  Flow(Session& session, uint8_t direction, Peer& source, Peer& target);

  // Arms a receive if the flow may receive now.
  void arm();
  void resumeAfterBuffers() noexcept override;
  void onRecv(int32_t res, uint32_t flags) noexcept;
  // Copy path: decrypts (or copies) a received chunk and delivers the plaintext. False if
  // the session was torn down.
  bool processCopy(relay::ChunkRef chunk);
  // Group path: submits one group for the next chunk.
  void submitGroup();
  void releaseGroup(GroupOp* op);
  // Splice: moves bytes source -> pipe -> target until one side would block, then waits
  // for that side with a poll.
  void pump();
  void onSourceReady(int32_t res, uint32_t flags) noexcept;
  void onTargetReady(int32_t res, uint32_t flags) noexcept;
  // Gives the pipe back to the host (closed if it still holds bytes).
  void releasePipe();

  Session& session_;
  const uint8_t direction_;
  Peer& source_;
  Peer& target_;
  bool copy_ = false;           // received bytes pass through userspace (TLS, or relay_path copy)
  uint8_t path_ = 0;            // metrics::PathIndex its (non-group) chunks count under
  bool groupCapable_ = false;   // the worker runs the group path and no side needs userspace TLS
  bool waitingTarget_ = false;  // group path: the next receive waits for the target's send
  uint64_t received_ = 0;       // bytes received from the source (access log)
  uint64_t groupBackoffUntil_ = 0;  // after -ENOBUFS from the kernel: mainline until then
  GroupOp* group_ = nullptr;        // the group whose leader is in flight
  GroupOp* freeGroups_ = nullptr;
  std::vector<std::unique_ptr<GroupOp>> groups_;
  std::vector<relay::GroupMember> members_;  // reused for every submission
  bool receiving_ = false;                   // a receive (or a multishot receive) is armed
  bool multishot_ = false;                   // ...and it is a multishot one
  bool cancelling_ = false;                  // back-pressure asked the multishot receive to stop
  bool paused_ = false;
  bool ended_ = false;
  bool copyWaiting_ = false;  // processCopy() stopped for lack of user buffers
  relay::ChunkRef copyHold_;  // plaintext copy path: the chunk it stopped at
  relay::BoundCompletion<Flow, &Flow::onRecv> recvDone_{*this};
  // Splice (mainline, one target, no tap, no TLS): source -> pipe_ -> target in the kernel.
  // A direction starts on RECV/SEND; a full chunk (a burst: more is probably waiting)
  // switches it to splice once what it received is sent; it stays there while bursts are
  // large and goes back after a burst smaller than a chunk (small chunks cost less as
  // RECV/SEND than as a poll and three splices).
  bool spliceEligible_ = false;  // nothing but a mirror keeps this direction from splicing
  bool spliceCapable_ = false;   // ...and no mirror takes it (one cut mid-session lets it)
  bool spliceWanted_ = false;    // switch at the next arm() once the target has drained
  bool splice_ = false;          // splicing now
  uint64_t burst_ = 0;           // bytes spliced in since the source was last waited for
  bool eof_ = false;             // splice: the source ended; the flow ends once the pipe is empty
  bool sourcePolling_ = false;
  bool targetPolling_ = false;
  int pipe_[2] = {-1, -1};  // held only while it holds bytes (or is being filled)
  int pipeCapacity_ = 0;
  uint32_t piped_ = 0;  // bytes in the pipe
  relay::BoundCompletion<Flow, &Flow::onSourceReady> sourceReady_{*this};
  relay::BoundCompletion<Flow, &Flow::onTargetReady> targetReady_{*this};
};

class Session final : public Timer, public TapStreamOwner, public SlotWaiter {
public:
  Session(SessionHost& host, ListenerContext& listener, int clientFd);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start();
  // Drain deadline or shutdown: reset everything now.
  void abort();
  void onTimer(uint64_t now) noexcept override;
  void tapWriteStarted() noexcept override { ++inflight_; }
  void tapWriteFinished() noexcept override;
  void lookForSlot() noexcept override;

  bool closing() const { return state_ == State::Closing; }
  ListenerContext& listener() { return *listener_; }
  // Waiting for a slot of its upstream pool (queue_timeout), in the pool's queue or on
  // its own timer after a failed connect.
  bool waitingForSlot() const { return queued_ && !done_; }
  // A DNS move replaced the pool this session waits for a slot of: it waits for the new
  // pool's servers, in `next` (its listener's context in the newest routes; the host
  // counts it there), keeping its deadline and its turn. `former` (the routes it leaves)
  // stays alive with the session: a mirror connect it started still reports to them, and
  // the access log may name a server of theirs (a connect that succeeded before it waited
  // again).
  // The host first takes every such session out of its old queue (leaveQueueToMove()),
  // then moves them oldest first (SlotQueue::ticket()).
  void leaveQueueToMove();
  void moveToRoutes(ListenerContext& next, std::shared_ptr<const void> former);
  uint64_t id() const { return id_; }
  void setId(uint64_t id) { id_ = id; }
  // Buffer pressure: of the open mirrors, the one whose queue holds the most chunks that
  // neither the client nor the primary still needs (only those come free when it is cut);
  // returns that count (0: no mirror holds any alone).
  size_t mirrorHoldingMostAlone(size_t* mirror) const;
  void cutMirror(size_t index, const char* why);
  // Kernel TLS met a record that is not data on `source`: 0 if it was close_notify (the
  // direction ended), -EAGAIN to receive on, else -errno (logged) to reset the session.
  int ktlsRecordReceived(Peer& source);

  // Intrusive list of the host's sessions.
  Session* prev_ = nullptr;
  Session* next_ = nullptr;

private:
  friend class Peer;
  friend class Flow;
  friend struct GroupOp;
  enum class State : uint8_t {
    ProxyHeader,  // accept_proxy_protocol: reading the client's PROXY protocol header
    ClientHello,  // routes without tls: reading ahead for the server name the client asks for
    Handshaking,
    Connecting,
    UpstreamHandshake,
    Relaying,
    Closing
  };
  enum class MirrorState : uint8_t { Unsampled, Connecting, Open, Cut };

  struct Mirror {
    explicit Mirror(Session& s, size_t index) : peer(s, Peer::Kind::Mirror, index) {}
    Peer peer;
    MirrorState state = MirrorState::Unsampled;
    // The health and address it connected to, from the routes of the time (a session
    // that moves to a DNS move's routes may have a connect to the old address in flight).
    PeerHealth* health = nullptr;
    const config::Address* address = nullptr;
    // A mirror with `upstream`: its pool and the server this session's copy goes to (a
    // slot of the pool's, held until the session ends).
    UpstreamPool* pool = nullptr;
    int32_t server = -1;
    uint64_t connectDeadline = 0;
    uint64_t connectStart = 0;
    bool timedOut = false;
    bool wantsResponses = false;
  };

  const config::ListenerConfig& cfg() const { return *listener_->config; }
  // A pool's connect_timeout, else the listener's.
  config::Duration connectTimeoutOf(const UpstreamPool& pool) const;
  metrics::ListenerStats& stats() { return *listener_->stats; }
  // Toward the pool the session's route chose.
  metrics::UpstreamUseStats& upstreamStats() {
    return listener_->stats->upstreams[listener_->upstreamUse];
  }
  // After the PROXY protocol header (if any): the TLS handshake or the session itself.
  void afterProxyHeader();
  // Reads what has arrived of the client's PROXY protocol header, never a byte past it.
  void readProxyHeader();
  void pollForProxyHeader();  // waits for more of the header (POLLIN on the client)
  void proxyHeaderPolled(int32_t res);
  void proxyHeaderFailed(const std::string& why);
  // Routes without tls: peeks at the client's first bytes, which stay in the socket for
  // the server, until its ClientHello is whole (SO_RCVLOWAT: the poll wakes when the next
  // piece is), it is not TLS, it closes, or connect_timeout passes; then beginSession().
  void readClientHello();
  void pollForClientHello();
  void clientHelloPolled(int32_t res);
  void afterClientHello(std::string serverName);
  // The route for the server name the client asked for (beginSession); false when there is
  // none and the listener has no upstream of its own: the session is reset.
  bool chooseRoute();
  // Reads and drops what the client sent and nobody will read (up to 256 KiB), so the
  // close that follows sends a FIN after an alert, not a reset.
  void discardUnread(int fd);
  // The server name the client sent in TLS SNI: to grelay's own handshake, or read ahead of
  // its ClientHello for routes; empty = none.
  std::string_view clientServerName() const;
  // forward_sni: the name the client asked for, when it is a host name, becomes the SNI of
  // the upstream handshake and the name its certificate must have.
  void forwardServerName(UpstreamPeerName& peer, bool verify) const;
  // The PROXY protocol header that starts a connection to a server or a mirror: `version`
  // with the TLVs `wanted` (proxy_protocol, proxy_protocol_tlvs).
  std::string outgoingProxyHeader(config::ProxyProtocol version,
                                  const config::ProxyProtocolTlvs& wanted) const;
  // Sends that header first on `fd`, just connected (nothing with version Off): 0, or
  // -errno (-EAGAIN for a short send) for a connect that failed.
  int32_t sendProxyHeader(int fd, config::ProxyProtocol version,
                          const config::ProxyProtocolTlvs& wanted) const;
  void beginSession();
  void continueHandshake(Peer& peer);
  void handshakeDone(Peer& peer);
  void handshakeFailed(Peer& peer, bool timedOut);
  // Every server left was at max_conns: waits for a slot (queue_timeout) and returns true,
  // or false when the pool does not queue or the wait is over.
  bool waitForSlot();
  // serverOrder_ from the upstream pool's balancing, for a first pass over it.
  void pickServerOrder();
  void leaveQueue();
  void connectPrimary();
  void primaryConnected(int32_t res);
  // A connect or upstream TLS handshake to server_ failed: counts it and tells the pool.
  // The primary is connected (and its TLS handshake done): counted, then relaying.
  void upstreamReady();
  void upstreamFailed(const std::string& why);
  PeerHealth* mirrorHealth(size_t index) const;
  // A mirror with `upstream`: the first server of the pool's order (its balance) that is
  // not marked down and takes a slot, which it then holds; -1 when none does.
  int32_t pickMirrorServer(UpstreamPool& pool);
  // A connect (and TLS handshake) to `server` of `pool`, the primary's or a mirror's,
  // succeeded or failed: its health and per-server counts. serverConnectFailed() logs the
  // marking down (after `who`) and returns true when this failure marked the server down.
  void serverConnected(UpstreamPool& pool, uint32_t server);
  bool serverConnectFailed(UpstreamPool& pool, uint32_t server, const std::string& why,
                           const std::string& who);
  // Gives back the slot the session holds on server_ (see UpstreamPool::acquire).
  void releaseServer();
  void connectMirrors();
  void mirrorConnected(size_t index, int32_t res);
  void startRelaying();
  void writeAccessLog();
  // tcp_keepalive on one of the session's sockets.
  void keepAlive(int fd);
  void deliver(Flow& flow, const relay::ChunkRef& chunk);
  // Group path: may this flow's next chunk go as a group (every mirror that takes it is
  // connected and has nothing queued from the mainline path)?
  bool groupReady(const Flow& flow) const;
  void groupReceived(Flow& flow, GroupOp& op);
  bool takesFlow(size_t mirror, const Flow& flow) const;
  // Whether a direction may splice now: eligible, and every mirror that takes it is cut
  // (or none does). Called when relaying starts and when a mirror is cut.
  void updateSplice(Flow& flow);
  // Splice bookkeeping: what a pump moved in and out.
  void spliceReceived(Flow& flow, uint32_t bytes);
  void spliceSent(Flow& flow, uint32_t bytes);
  void sourceEnded(Flow& flow);
  void peerSent(Peer& peer, uint32_t bytes);
  void peerFailed(Peer& peer, int32_t err);
  void sourceFailed(Flow& flow, int32_t err);
  void opDone(Peer& peer);
  void maybeFinish();
  // Starts teardown: cancels outstanding requests; `reset*` choose RST over FIN.
  void close(bool resetClient, bool resetPrimary, bool resetMirrors, tap::CloseReason reason);
  void openTap(bool withUpstream);
  void closePeerIfIdle(Peer& peer, bool reset);
  void closeMirrorIfDone(size_t index);
  void cancelPeer(Peer& peer);
  void activity() { lastActivity_ = host_.now(); }
  void rescheduleTimer();
  bool sampled(uint32_t percent) const;

  SessionHost& host_;
  ListenerContext* listener_;  // never null
  uint64_t id_ = 0;
  State state_ = State::Connecting;
  Peer client_;
  Peer primary_;
  std::vector<std::unique_ptr<Mirror>> mirrors_;
  Flow request_;
  Flow response_;
  sockaddr_storage clientAddress_{};
  sockaddr_storage localAddress_{};
  std::vector<uint32_t> serverOrder_;
  size_t serverAttempt_ = 0;
  // queue_timeout: the servers passed over at max_conns on this pass over serverOrder_,
  // which the next pass tries again. While waiting (queued_, in listener_->slotQueue) the
  // oldest waiter's pass runs at retryAt_, at most 5 ms apart or at once when told to look;
  // the others' retryAt_ is their queueDeadline_ (0: never waited).
  std::vector<uint32_t> fullServers_;
  uint64_t queueDeadline_ = 0;
  uint64_t queueStart_ = 0;    // when it first found every server full (access log)
  uint64_t queueNanos_ = 0;    // from then until it last stopped waiting
  uint64_t waitStart_ = 0;     // when the current wait began (the queue duration histogram)
  int64_t connectNanos_ = -1;  // the successful upstream TCP connect (access log)
  uint64_t retryAt_ = 0;
  uint64_t retryDelay_ = 0;
  bool queued_ = false;
  bool movingInQueue_ = false;  // between leaveQueueToMove() and moveToRoutes(): in line,
  bool movingAside_ = false;    // or aside
  std::vector<std::shared_ptr<const void>> formerRoutes_;  // the routes DNS moves took it from
  bool mirrorsDeferred_ = false;  // connectMirrors() when a server slot is taken
  int64_t server_ = -1;           // index of the connected server
  // The last server a connect succeeded to (access log), of the routes of the time (a
  // session that then waits again may move to a DNS move's; formerRoutes_ keeps these).
  const config::Address* lastServer_ = nullptr;
  uint64_t connectStart_ = 0;
  uint64_t connectDeadline_ = 0;
  bool connectTimedOut_ = false;
  // The client's TLS handshake, the upstream's, or the client's PROXY protocol header.
  uint64_t handshakeDeadline_ = 0;
  bool handshakeTimedOut_ = false;
  bool clientCounted_ = false;           // clientLimit->acquire() succeeded: release() at the end
  std::string proxyHeader_;              // the part of the client's PROXY header read so far
  std::string receivedTlvs_;             // the TLVs of the client's (v2) PROXY header
  std::string peekedName_;               // the server name read ahead from the ClientHello
  std::vector<std::string> peekedAlpn_;  // and the ALPN protocols it offers
  bool clientHelloEnded_ = false;        // the client closed (or timed out) before it was whole
  bool lowWaterSet_ = false;             // SO_RCVLOWAT is raised on the client's socket
  bool routed_ = false;                  // beginSession() chose the upstream pool
  // Why the read-ahead found no name to route by (metrics::RouteMiss).
  uint8_t routeMiss_ = metrics::kRouteUnmatched;
  uint64_t lastActivity_ = 0;
  uint64_t closeStart_ = 0;
  uint32_t inflight_ = 0;
  bool resetClient_ = false;
  bool resetPrimary_ = false;
  bool resetMirrors_ = false;
  TapStream tap_;
  bool counted_ = false;
  uint64_t started_ = 0;  // monotonic ns (access log)
  // max_session_duration: when this session is reset, jittered per session (0 = never).
  uint64_t maxDurationDeadline_ = 0;
  tap::CloseReason closeReason_ = tap::CloseReason::kNormal;
  uint32_t mirrorsCut_ = 0;
  bool upstreamCounted_ = false;  // holds a slot on server_ (UpstreamPool::acquire)
  bool done_ = false;
};

}  // namespace grelay::proxy
