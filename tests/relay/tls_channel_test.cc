// TlsChannel without io_uring: two channels (server + client) handshake over a
// non-blocking socketpair driven by poll(), then switch to the memory BIO and exchange
// ciphertext through feed()/read()/write()/takeOutbound() the way the ring would.
#include "relay/tls_channel.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace grelay::relay {
namespace {

using Step = TlsChannel::Step;
using ReadStatus = TlsChannel::ReadStatus;

struct EvpKeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, EvpKeyFree>;
using CertPtr = std::unique_ptr<X509, X509Free>;
using CtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// A throwaway self-signed P-256 certificate for CN=localhost with SANs
// DNS:localhost and IP:127.0.0.1, valid for a day.
struct TestIdentity {
  KeyPtr key;
  CertPtr cert;
};

TestIdentity makeIdentity() {
  TestIdentity id;
  id.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!id.key) {
    return id;
  }
  id.cert.reset(X509_new());
  X509* x = id.cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
  X509_set_pubkey(x, id.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
  X509_EXTENSION* san =
      X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
  if (san != nullptr) {
    X509_add_ext(x, san, -1);
    X509_EXTENSION_free(san);
  }
  if (X509_sign(x, id.key.get(), EVP_sha256()) == 0) {
    id.cert.reset();
  }
  return id;
}

// Like grelay's listener contexts: TLS >= 1.2; `tickets` = 0 as grelay configures it.
CtxPtr serverContext(const TestIdentity& id, int tickets = 0) {
  CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_use_certificate(ctx.get(), id.cert.get());
  SSL_CTX_use_PrivateKey(ctx.get(), id.key.get());
  SSL_CTX_set_num_tickets(ctx.get(), static_cast<size_t>(tickets));
  return ctx;
}

// A client that trusts `id`'s certificate (and nothing else) when `verify`.
CtxPtr clientContext(const TestIdentity& id, bool verify = true, int maxVersion = 0) {
  CtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (maxVersion != 0) {
    SSL_CTX_set_max_proto_version(ctx.get(), maxVersion);
  }
  if (verify) {
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), id.cert.get());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  return ctx;
}

bool finished(Step s) {
  return s == Step::Done || s == Step::Failed;
}

short eventsFor(Step s) {
  return s == Step::WantWrite ? POLLOUT : s == Step::WantRead ? POLLIN : 0;
}

class TlsChannelTest : public ::testing::Test {
protected:
  void SetUp() override {
    // The socket BIO writes with write(2): like grelay (proxy/server.cc), take EPIPE, not
    // SIGPIPE, when the peer is gone.
    signal(SIGPIPE, SIG_IGN);
    id_ = makeIdentity();
    ASSERT_TRUE(id_.key && id_.cert) << "cannot make a test certificate";
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    serverFd_ = fds[0];
    clientFd_ = fds[1];
  }

  void TearDown() override {
    client_.reset();
    server_.reset();
    closeFd(serverFd_);
    closeFd(clientFd_);
  }

  static void closeFd(int& fd) {
    if (fd >= 0) {
      close(fd);
      fd = -1;
    }
  }

  void makeChannels(SSL_CTX* serverCtx, SSL_CTX* clientCtx, UserBufferPool& serverPool,
                    UserBufferPool& clientPool) {
    server_ = std::make_unique<TlsChannel>(serverCtx, serverFd_, true, serverPool);
    client_ = std::make_unique<TlsChannel>(clientCtx, clientFd_, false, clientPool);
    ASSERT_TRUE(server_->valid());
    ASSERT_TRUE(client_->valid());
  }

  // Drives both handshakes with poll() until each is Done or Failed (10 s at most).
  void handshakeBoth() {
    serverStep_ = Step::WantRead;
    clientStep_ = Step::WantRead;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!(finished(serverStep_) && finished(clientStep_))) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "handshake does not finish";
      if (!finished(clientStep_)) {
        clientStep_ = client_->handshake();
      }
      if (!finished(serverStep_)) {
        serverStep_ = server_->handshake();
      }
      pollfd p[2] = {{finished(serverStep_) ? -1 : serverFd_, eventsFor(serverStep_), 0},
                     {finished(clientStep_) ? -1 : clientFd_, eventsFor(clientStep_), 0}};
      if (p[0].fd >= 0 || p[1].fd >= 0) {
        poll(p, 2, 100);
      }
    }
  }

  // Both handshakes done, both channels on the memory BIO, anything the server wrote to
  // the socket after its handshake (session tickets) handed to the client.
  void connect(SSL_CTX* serverCtx, SSL_CTX* clientCtx, UserBufferPool& pool) {
    makeChannels(serverCtx, clientCtx, pool, pool);
    handshakeBoth();
    ASSERT_EQ(serverStep_, Step::Done) << server_->error();
    ASSERT_EQ(clientStep_, Step::Done) << client_->error();
    EXPECT_FALSE(server_->ktls());
    EXPECT_FALSE(client_->ktls());
    ASSERT_TRUE(server_->useMemoryBio());
    ASSERT_TRUE(client_->useMemoryBio());
    drainSocket(clientFd_, *client_, pool);
    drainSocket(serverFd_, *server_, pool);
  }

  // What the ring would do: receive what is in the socket and feed it.
  static void drainSocket(int fd, TlsChannel& channel, UserBufferPool& pool) {
    while (true) {
      ChunkRef c = pool.allocate();
      ASSERT_TRUE(c);
      ssize_t n = recv(fd, c.mutableData(), c.get()->capacity, 0);
      if (n <= 0) {
        return;
      }
      c.get()->length = static_cast<uint32_t>(n);
      channel.feed(std::move(c));
    }
  }

  // Moves `from`'s outbound ciphertext into `to`, re-cut into pieces of random sizes
  // (as TCP would), so records straddle the chunks `to` is fed.
  void transfer(TlsChannel& from, TlsChannel& to, UserBufferPool& pool) {
    std::vector<ChunkRef> out;
    from.takeOutbound(out);
    EXPECT_FALSE(from.hasOutbound());
    std::vector<uint8_t> wire;
    for (const ChunkRef& c : out) {
      wire.insert(wire.end(), c.data(), c.data() + c.size());
    }
    out.clear();
    size_t off = 0;
    while (off < wire.size()) {
      ChunkRef c = pool.allocate();
      ASSERT_TRUE(c) << "pool exhausted while transferring";
      std::uniform_int_distribution<uint32_t> size(1, c.get()->capacity);
      uint32_t n = std::min<uint32_t>(size(rng_), static_cast<uint32_t>(wire.size() - off));
      std::memcpy(c.mutableData(), wire.data() + off, n);
      c.get()->length = n;
      to.feed(std::move(c));
      off += n;
    }
  }

  // Reads everything `channel` can decrypt now; returns the last status.
  static ReadStatus readAll(TlsChannel& channel, std::vector<uint8_t>* into,
                            uint32_t maxChunk = UINT32_MAX) {
    while (true) {
      ChunkRef plain;
      ReadStatus st = channel.read(&plain);
      if (st != ReadStatus::Data) {
        return st;
      }
      EXPECT_GT(plain.size(), 0u);
      EXPECT_LE(plain.size(), maxChunk);
      into->insert(into->end(), plain.data(), plain.data() + plain.size());
    }
  }

  std::vector<uint8_t> randomBytes(size_t n) {
    std::vector<uint8_t> v(n);
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : v) {
      b = static_cast<uint8_t>(byte(rng_));
    }
    return v;
  }

  // Pools outlive the channels that lease their buffers (members die in reverse order).
  UserBufferPool& makePool(uint32_t bufferSize, uint32_t maxBuffers) {
    pools_.push_back(std::make_unique<UserBufferPool>(bufferSize, maxBuffers));
    return *pools_.back();
  }

  TestIdentity id_;
  std::vector<std::unique_ptr<UserBufferPool>> pools_;
  int serverFd_ = -1;
  int clientFd_ = -1;
  std::unique_ptr<TlsChannel> server_;
  std::unique_ptr<TlsChannel> client_;
  Step serverStep_ = Step::WantRead;
  Step clientStep_ = Step::WantRead;
  std::mt19937 rng_{20240605};
};

TEST_F(TlsChannelTest, RandomSizesAreByteExactBothWays) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 1024);
  connect(sctx.get(), cctx.get(), pool);
  EXPECT_EQ(client_->describe().rfind("TLSv1.3 TLS_", 0), 0u) << client_->describe();

  std::uniform_int_distribution<size_t> size(1, 200 * 1024);
  for (int round = 0; round < 24; ++round) {
    const bool toServer = round % 2 == 0;
    TlsChannel& writer = toServer ? *client_ : *server_;
    TlsChannel& reader = toServer ? *server_ : *client_;
    std::vector<uint8_t> sent;
    for (int w = 0; w < 1 + round % 3; ++w) {  // one to three writes per round
      std::vector<uint8_t> data = randomBytes(size(rng_));
      ASSERT_TRUE(writer.write(data.data(), data.size())) << writer.error();
      sent.insert(sent.end(), data.begin(), data.end());
    }
    ASSERT_TRUE(writer.hasOutbound());
    transfer(writer, reader, pool);
    std::vector<uint8_t> got;
    EXPECT_EQ(readAll(reader, &got, pool.bufferSize()), ReadStatus::NeedMore) << reader.error();
    ASSERT_EQ(got.size(), sent.size()) << "round " << round;
    ASSERT_TRUE(got == sent) << "round " << round << ": bytes differ";
  }
  // Everything was handed back.
  EXPECT_FALSE(client_->hasOutbound());
  EXPECT_FALSE(server_->hasOutbound());
}

TEST_F(TlsChannelTest, Tls12IsByteExactToo) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_, true, TLS1_2_VERSION);
  UserBufferPool& pool = makePool(16 * 1024, 256);
  connect(sctx.get(), cctx.get(), pool);
  EXPECT_EQ(server_->describe().rfind("TLSv1.2 ", 0), 0u) << server_->describe();
  std::vector<uint8_t> data = randomBytes(100 * 1024 + 7);
  ASSERT_TRUE(client_->write(data.data(), data.size()));
  transfer(*client_, *server_, pool);
  std::vector<uint8_t> got;
  EXPECT_EQ(readAll(*server_, &got), ReadStatus::NeedMore);
  EXPECT_TRUE(got == data);
}

TEST_F(TlsChannelTest, PostHandshakeTicketsFromTheSocketAreConsumed) {
  // An upstream server that sends session tickets after its handshake: they arrive on
  // the socket after the client switched to the memory BIO, and must not surface as data.
  CtxPtr sctx = serverContext(id_, /*tickets=*/2);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 256);
  connect(sctx.get(), cctx.get(), pool);
  std::vector<uint8_t> got;
  EXPECT_EQ(readAll(*client_, &got), ReadStatus::NeedMore) << client_->error();
  EXPECT_TRUE(got.empty());
  const std::string hello = "after the tickets";
  ASSERT_TRUE(server_->write(reinterpret_cast<const uint8_t*>(hello.data()), hello.size()));
  transfer(*server_, *client_, pool);
  EXPECT_EQ(readAll(*client_, &got), ReadStatus::NeedMore);
  EXPECT_EQ(std::string(got.begin(), got.end()), hello);
}

TEST_F(TlsChannelTest, SmallRecordsAreCoalescedIntoOneChunk) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 256);
  connect(sctx.get(), cctx.get(), pool);
  for (int i = 0; i < 3; ++i) {
    std::vector<uint8_t> piece(100, static_cast<uint8_t>('a' + i));
    ASSERT_TRUE(client_->write(piece.data(), piece.size()));
  }
  transfer(*client_, *server_, pool);
  ChunkRef plain;
  ASSERT_EQ(server_->read(&plain), ReadStatus::Data);
  EXPECT_EQ(plain.size(), 300u);
  EXPECT_EQ(plain.data()[0], 'a');
  EXPECT_EQ(plain.data()[299], 'c');
  plain.reset();
  EXPECT_EQ(server_->read(&plain), ReadStatus::NeedMore);
}

TEST_F(TlsChannelTest, CloseNotifyReadsAsClosedAfterTheData) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 256);
  connect(sctx.get(), cctx.get(), pool);
  const std::string last = "last words";
  ASSERT_TRUE(client_->write(reinterpret_cast<const uint8_t*>(last.data()), last.size()));
  client_->shutdown();
  ASSERT_TRUE(client_->hasOutbound());
  transfer(*client_, *server_, pool);
  std::vector<uint8_t> got;
  EXPECT_EQ(readAll(*server_, &got), ReadStatus::Closed) << server_->error();
  EXPECT_EQ(std::string(got.begin(), got.end()), last);
  // The server still answers after the client's close_notify (TLS half-close), then
  // closes its side too.
  const std::string answer = "answer";
  ASSERT_TRUE(server_->write(reinterpret_cast<const uint8_t*>(answer.data()), answer.size()))
      << server_->error();
  server_->shutdown();
  transfer(*server_, *client_, pool);
  got.clear();
  EXPECT_EQ(readAll(*client_, &got), ReadStatus::Closed) << client_->error();
  EXPECT_EQ(std::string(got.begin(), got.end()), answer);
}

TEST_F(TlsChannelTest, CorruptedCiphertextFailsWithAReason) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 256);
  connect(sctx.get(), cctx.get(), pool);
  std::vector<uint8_t> data = randomBytes(1000);
  ASSERT_TRUE(client_->write(data.data(), data.size()));
  std::vector<ChunkRef> out;
  client_->takeOutbound(out);
  ASSERT_EQ(out.size(), 1u);
  ASSERT_GT(out[0].size(), 500u);
  out[0].mutableData()[300] ^= 0x40;  // inside the record's encrypted payload
  server_->feed(out[0]);
  out.clear();
  std::vector<uint8_t> got;
  EXPECT_EQ(readAll(*server_, &got), ReadStatus::Failed);
  EXPECT_TRUE(got.empty()) << "corrupted bytes were delivered";
  EXPECT_EQ(server_->error().rfind("decrypt: ", 0), 0u) << server_->error();
  EXPECT_GT(server_->error().size(), std::strlen("decrypt: ")) << server_->error();
}

TEST_F(TlsChannelTest, GarbageInsteadOfARecordFails) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 256);
  connect(sctx.get(), cctx.get(), pool);
  ChunkRef c = pool.allocate();
  const char text[] = "GET / HTTP/1.1\r\n\r\n";
  std::memcpy(c.mutableData(), text, sizeof(text) - 1);
  c.get()->length = sizeof(text) - 1;
  server_->feed(std::move(c));
  std::vector<uint8_t> got;
  EXPECT_EQ(readAll(*server_, &got), ReadStatus::Failed);
  EXPECT_FALSE(server_->error().empty());
}

TEST_F(TlsChannelTest, ReadFailsWhenThePoolIsExhausted) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  connect(sctx.get(), cctx.get(), pool);
  std::vector<uint8_t> data = randomBytes(4000);
  ASSERT_TRUE(client_->write(data.data(), data.size()));
  transfer(*client_, *server_, pool);
  std::vector<ChunkRef> hog;
  while (ChunkRef c = pool.allocate()) {
    hog.push_back(std::move(c));
  }
  ChunkRef plain;
  EXPECT_EQ(server_->read(&plain), ReadStatus::Failed);
  EXPECT_NE(server_->error().find("out of TLS buffers"), std::string::npos) << server_->error();
  // Buffers back: the bytes were not lost.
  hog.clear();
  std::vector<uint8_t> got;
  EXPECT_EQ(readAll(*server_, &got), ReadStatus::NeedMore) << server_->error();
  EXPECT_TRUE(got == data);
}

// Callers check room with outputBuffers() before write(); the estimate must cover what
// a write really takes, so a write never has to fail (or overdraft) for lack of buffers.
TEST_F(TlsChannelTest, OutputBuffersCoversWhatAWriteTakes) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& serverPool = makePool(16 * 1024, 64);
  UserBufferPool& clientPool = makePool(4 * 1024, 256);
  makeChannels(sctx.get(), cctx.get(), serverPool, clientPool);
  handshakeBoth();
  ASSERT_EQ(serverStep_, Step::Done) << server_->error();
  ASSERT_EQ(clientStep_, Step::Done) << client_->error();
  ASSERT_TRUE(client_->useMemoryBio());
  for (size_t size : {1u, 100u, 4096u, 16384u, 16385u, 65536u, 200000u}) {
    std::vector<uint8_t> data = randomBytes(size);
    const uint32_t before = clientPool.leased();
    ASSERT_TRUE(client_->write(data.data(), data.size())) << client_->error();
    std::vector<ChunkRef> out;
    client_->takeOutbound(out);
    EXPECT_LE(clientPool.leased() - before, TlsChannel::outputBuffers(size, 4 * 1024)) << size;
  }
}

// Past the cap a write still succeeds (output whose room was checked must never be
// lost to an estimate that came out short); the pool counts it.
TEST_F(TlsChannelTest, WriteOverdraftsInsteadOfFailing) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& serverPool = makePool(16 * 1024, 64);
  UserBufferPool& clientPool = makePool(4 * 1024, 4);  // 16 KiB of ciphertext "allowed"
  makeChannels(sctx.get(), cctx.get(), serverPool, clientPool);
  handshakeBoth();
  ASSERT_EQ(clientStep_, Step::Done) << client_->error();
  ASSERT_TRUE(client_->useMemoryBio());
  std::vector<uint8_t> data = randomBytes(64 * 1024);
  EXPECT_TRUE(client_->write(data.data(), data.size())) << client_->error();
  EXPECT_GT(clientPool.leased(), clientPool.maxBuffers());
  EXPECT_EQ(clientPool.available(), 0u);
}

TEST_F(TlsChannelTest, HostNameIsVerified) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  makeChannels(sctx.get(), cctx.get(), pool, pool);
  client_->setPeerName("localhost", "localhost");
  handshakeBoth();
  EXPECT_EQ(clientStep_, Step::Done) << client_->error();
  EXPECT_EQ(serverStep_, Step::Done) << server_->error();
}

TEST_F(TlsChannelTest, WrongHostNameFailsTheHandshakeWithTheReason) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  makeChannels(sctx.get(), cctx.get(), pool, pool);
  client_->setPeerName("api.internal", "api.internal");
  handshakeBoth();
  EXPECT_EQ(clientStep_, Step::Failed);
  EXPECT_NE(client_->error().find("certificate verify failed"), std::string::npos)
      << client_->error();
  EXPECT_NE(client_->error().find("hostname mismatch"), std::string::npos) << client_->error();
  EXPECT_EQ(serverStep_, Step::Failed) << "the server should get the client's alert";
}

TEST_F(TlsChannelTest, IpAddressIsMatchedAgainstIpSans) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  makeChannels(sctx.get(), cctx.get(), pool, pool);
  client_->setPeerName("", "127.0.0.1");
  handshakeBoth();
  EXPECT_EQ(clientStep_, Step::Done) << client_->error();
}

TEST_F(TlsChannelTest, WrongIpAddressFailsTheHandshake) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  makeChannels(sctx.get(), cctx.get(), pool, pool);
  client_->setPeerName("", "10.0.0.1");
  handshakeBoth();
  EXPECT_EQ(clientStep_, Step::Failed);
  EXPECT_NE(client_->error().find("IP address mismatch"), std::string::npos) << client_->error();
}

TEST_F(TlsChannelTest, UntrustedCertificateFailsTheHandshake) {
  TestIdentity other = makeIdentity();
  ASSERT_TRUE(other.cert);
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(other);  // trusts another certificate
  UserBufferPool& pool = makePool(16 * 1024, 64);
  makeChannels(sctx.get(), cctx.get(), pool, pool);
  handshakeBoth();
  EXPECT_EQ(clientStep_, Step::Failed);
  EXPECT_NE(client_->error().find("certificate verify failed"), std::string::npos)
      << client_->error();
}

TEST_F(TlsChannelTest, PeerClosingDuringTheHandshakeFails) {
  CtxPtr sctx = serverContext(id_);
  CtxPtr cctx = clientContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  makeChannels(sctx.get(), cctx.get(), pool, pool);
  ASSERT_EQ(client_->handshake(), Step::WantRead);  // ClientHello sent
  closeFd(clientFd_);
  Step s = Step::WantRead;
  for (int i = 0; i < 100 && !finished(s); ++i) {
    s = server_->handshake();
    pollfd p{serverFd_, eventsFor(s), 0};
    if (!finished(s)) {
      poll(&p, 1, 100);
    }
  }
  EXPECT_EQ(s, Step::Failed);
  EXPECT_FALSE(server_->error().empty());
}

TEST_F(TlsChannelTest, PlaintextClientFailsTheServerHandshake) {
  CtxPtr sctx = serverContext(id_);
  UserBufferPool& pool = makePool(16 * 1024, 64);
  server_ = std::make_unique<TlsChannel>(sctx.get(), serverFd_, true, pool);
  const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(write(clientFd_, req, sizeof(req) - 1), static_cast<ssize_t>(sizeof(req) - 1));
  EXPECT_EQ(server_->handshake(), Step::Failed);
  EXPECT_EQ(server_->error().rfind("handshake: ", 0), 0u) << server_->error();
}

TEST(KtlsControlRecordTest, CloseNotifyEndsTheDirection) {
  const uint8_t closeNotify[] = {1, 0};
  std::string what;
  EXPECT_EQ(ktlsControlRecord(21, closeNotify, 2, &what), 0);
  EXPECT_EQ(what, "warning alert close notify");
}

TEST(KtlsControlRecordTest, AFatalAlertResetsAndAWarningIsIgnored) {
  const uint8_t badRecordMac[] = {2, 20};
  std::string what;
  EXPECT_EQ(ktlsControlRecord(21, badRecordMac, 2, &what), -ECONNRESET);
  EXPECT_EQ(what, "fatal alert bad record mac");
  const uint8_t userCanceled[] = {1, 90};
  EXPECT_EQ(ktlsControlRecord(21, userCanceled, 2, &what), -EAGAIN);
  EXPECT_EQ(what, "warning alert user canceled");
}

TEST(KtlsControlRecordTest, TicketsAndHelloRequestsAreIgnored) {
  const uint8_t ticket[] = {4, 0, 0, 2, 0, 0};
  std::string what;
  EXPECT_EQ(ktlsControlRecord(22, ticket, sizeof(ticket), &what), -EAGAIN);
  EXPECT_EQ(what, "a session ticket (sessions are not resumed)");
  const uint8_t helloRequest[] = {0, 0, 0, 0};
  EXPECT_EQ(ktlsControlRecord(22, helloRequest, sizeof(helloRequest), &what), -EAGAIN);
}

TEST(KtlsControlRecordTest, RenegotiationAndMalformedRecordsAreProtocolErrors) {
  const uint8_t clientHello[] = {1, 0, 0, 40};
  std::string what;
  EXPECT_EQ(ktlsControlRecord(22, clientHello, sizeof(clientHello), &what), -EPROTO);
  EXPECT_NE(what.find("renegotiation"), std::string::npos) << what;
  const uint8_t keyUpdate[] = {24, 0, 0, 1, 0};
  EXPECT_EQ(ktlsControlRecord(22, keyUpdate, sizeof(keyUpdate), &what), -EPROTO);
  EXPECT_EQ(ktlsControlRecord(22, keyUpdate, 0, &what), -EPROTO);
  EXPECT_EQ(what, "an empty handshake record");
  EXPECT_EQ(ktlsControlRecord(21, clientHello, 1, &what), -EPROTO);
  EXPECT_EQ(what, "a truncated alert");
  EXPECT_EQ(ktlsControlRecord(20, clientHello, 1, &what), -EPROTO);
  EXPECT_EQ(ktlsControlRecord(99, clientHello, 1, &what), -EPROTO);
  EXPECT_EQ(what, "a record of unknown type 99");
}

TEST(KtlsControlRecordTest, WithoutKernelTlsAReadIsPlainData) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  ASSERT_EQ(::write(fds[0], "ab", 2), 2);
  uint8_t type = 0;
  uint8_t body[8];
  EXPECT_EQ(readKtlsRecord(fds[1], &type, body, sizeof(body)), 2);
  EXPECT_EQ(type, 23);
  EXPECT_EQ(readKtlsRecord(fds[1], &type, body, sizeof(body)), -EAGAIN);
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace grelay::relay
