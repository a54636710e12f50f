// One TLS connection of a session: the copy path's transport.
//
// The handshake runs on a socket BIO: OpenSSL reads and writes the non-blocking socket
// itself and the ring only reports readiness (pollAdd), so nothing ever blocks a ring and
// OpenSSL can switch the socket to kernel TLS (SSL_OP_ENABLE_KTLS) where the kernel has
// the "tls" ULP. After the handshake either
//  - kTLS is on in both directions: the kernel encrypts and decrypts, and the session
//    goes on like a plaintext one (mainline or group path); or
//  - the channel moves to a memory BIO: the ring receives ciphertext into user buffers,
//    OpenSSL decrypts it into plaintext chunks (feed/read) and encrypts outgoing chunks
//    into ciphertext chunks (write/takeOutbound) that the ring sends. No copy beyond
//    OpenSSL's own: the BIO reads straight from received chunks and writes straight into
//    pool buffers.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "relay/buffer.h"

namespace grelay::relay {

class TlsChannel {
public:
  enum class Step : uint8_t { Done, WantRead, WantWrite, Failed };
  enum class ReadStatus : uint8_t { Data, NeedMore, Closed, Failed };

  // `ctx` is shared (up-referenced); `pool` supplies plaintext and ciphertext buffers.
  TlsChannel(SSL_CTX* ctx, int fd, bool server, UserBufferPool& pool);
  ~TlsChannel();
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  bool valid() const { return ssl_ != nullptr; }
  SSL* handle() const { return ssl_; }  // for what the channel does not wrap (sessions)
  // Client side: SNI to send ("" = none) and the name or IP address the certificate must
  // match ("" = chain only). Call before the first handshake().
  void setPeerName(const std::string& sni, const std::string& verifyHost);

  // Advances the handshake on the socket. WantRead/WantWrite: poll for it and call again.
  Step handshake();
  // After Done, before useMemoryBio (a health check's exchange): sends or receives on the
  // socket directly. Done with *moved bytes (receiving, 0 = the peer closed); WantRead or
  // WantWrite: poll and call again; Failed: see error().
  Step sendDirect(const void* data, size_t len, size_t* moved);
  Step receiveDirect(void* data, size_t len, size_t* moved);
  // Kernel TLS took over both directions (after Done).
  bool ktls() const;
  bool ktlsSend() const;
  bool ktlsReceive() const;
  // After Done: the directions kernel TLS did not take move to a memory BIO, and the ring
  // does their socket I/O (feed/read for receiving, write/takeOutbound for sending).
  // OpenSSL 3.0 offloads TLS 1.3 sending but not receiving, so half and half is common.
  bool useMemoryBio(bool receive = true, bool send = true);

  // Ciphertext the ring received.
  void feed(ChunkRef ciphertext);
  // The next plaintext (up to one pool buffer). NeedMore: feed more ciphertext.
  // Closed: the peer sent close_notify.
  ReadStatus read(ChunkRef* plaintext);
  // Encrypts `len` bytes into outbound ciphertext. False on failure (see error()).
  // Check room first: outputBuffers(len) pool buffers are taken.
  bool write(const uint8_t* data, size_t len);
  static uint32_t outputBuffers(size_t len, uint32_t bufferSize) {
    // Up to 16 KiB of plaintext per record, each record at most 32 bytes larger.
    const size_t overhead = (len / 16384 + 1) * 32;
    return static_cast<uint32_t>((len + overhead) / bufferSize + 2);
  }
  // Queues close_notify (memory BIO) or sends it (kTLS). Best effort.
  void shutdown();
  // Ciphertext produced since the last call, in order.
  void takeOutbound(std::vector<ChunkRef>& out);
  bool hasOutbound() const { return !out_.empty() || (current_ && current_.size() > 0); }

  // What went wrong last (OpenSSL's reason, or a certificate verification error).
  const std::string& error() const { return error_; }
  std::string describe() const;  // "TLSv1.3 TLS_AES_128_GCM_SHA256"
  // After the handshake: the protocol version ("TLSv1.3"), the cipher's OpenSSL name and,
  // on the server side, the name the client sent in SNI (empty if none).
  const char* version() const;
  const char* cipher() const;
  // The handshake completed (version() and cipher() are the session's).
  bool established() const;
  // The handshake resumed an earlier session (a ticket or session ID).
  bool resumed() const;
  std::string_view serverName() const;
  // The protocol ALPN chose ("h2"); empty if none.
  std::string_view alpn() const;
  // On the server side after the handshake: the certificate the client sent (verified: a
  // bad one fails the handshake), if any: its subject's common name (UTF-8) and its whole
  // subject (RFC 2253, "CN=alice,O=Example"; bytes past ASCII as \XX, so it is ASCII).
  struct PeerCertificate {
    bool present = false;
    std::string commonName;
    std::string subject;
  };
  PeerCertificate peerCertificate() const;

private:
  struct Inbound {
    ChunkRef chunk;
    uint32_t offset = 0;
  };
  static BIO_METHOD* method();
  // The step an SSL call's result `ret` means; an error is recorded as `what`'s. Reading,
  // the peer's close_notify is Done (with 0 bytes); otherwise it is a failure.
  Step stepAfter(int ret, const char* what, bool reading = false);
  static int bioRead(BIO* bio, char* buf, int len);
  static int bioWrite(BIO* bio, const char* buf, int len);
  static long bioCtrl(BIO* bio, int cmd, long num, void* ptr);
  void recordError(const char* what, int ret);

  SSL* ssl_ = nullptr;
  UserBufferPool& pool_;
  std::deque<Inbound> in_;
  size_t inBytes_ = 0;
  std::vector<ChunkRef> out_;
  ChunkRef current_;  // the ciphertext chunk being filled
  bool outOfBuffers_ = false;
  std::string error_;
};

// Kernel TLS receiving: a record that is not application data (an alert, a handshake
// message) is handed only to a recvmsg(2) that asks for its type; a plain receive fails
// with EIO. What such a record (`type`, its `length` bytes in `body`) means for the
// direction: 0 = the peer closed it (close_notify), -EAGAIN = nothing to act on (a warning
// alert, a session ticket, a HelloRequest: go on receiving), else -errno for an error that
// ends the session. `what` names the record.
int ktlsControlRecord(uint8_t type, const uint8_t* body, size_t length, std::string* what);

// Reads the record at the head of a kernel TLS socket's receive queue with its type
// (non-blocking): the bytes read (up to `length`), or -errno. A record longer than
// `length` is only partly consumed: pass kMaxTlsRecord bytes.
constexpr size_t kMaxTlsRecord = 16384;
int readKtlsRecord(int fd, uint8_t* type, uint8_t* body, size_t length);

// An X.509 name in RFC 2253 form ("CN=alice,O=Example", as `openssl x509 -subject
// -nameopt RFC2253` prints it; bytes past ASCII as \XX); "" if it cannot be printed.
std::string rfc2253(const X509_NAME* name);

}  // namespace grelay::relay
