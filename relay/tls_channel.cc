#include "relay/tls_channel.h"

#include <linux/tls.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace grelay::relay {

BIO_METHOD* TlsChannel::method() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "grelay ring");
    BIO_meth_set_read(bm, &TlsChannel::bioRead);
    BIO_meth_set_write(bm, &TlsChannel::bioWrite);
    BIO_meth_set_ctrl(bm, &TlsChannel::bioCtrl);
    return bm;
  }();
  return m;
}

TlsChannel::TlsChannel(SSL_CTX* ctx, int fd, bool server, UserBufferPool& pool) : pool_(pool) {
  ssl_ = SSL_new(ctx);
  if (ssl_ == nullptr) {
    recordError("SSL_new", 0);
    return;
  }
  if (SSL_set_fd(ssl_, fd) != 1) {
    recordError("SSL_set_fd", 0);
    SSL_free(ssl_);
    ssl_ = nullptr;
    return;
  }
  if (server) {
    SSL_set_accept_state(ssl_);
  } else {
    SSL_set_connect_state(ssl_);
  }
}

TlsChannel::~TlsChannel() {
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
  }
}

void TlsChannel::setPeerName(const std::string& sni, const std::string& verifyHost) {
  if (!sni.empty()) {
    SSL_set_tlsext_host_name(ssl_, sni.c_str());
  }
  if (verifyHost.empty()) {
    return;
  }
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
  // An IP literal is matched against the certificate's IP SANs, a name against DNS names.
  if (X509_VERIFY_PARAM_set1_ip_asc(param, verifyHost.c_str()) != 1) {
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set1_host(ssl_, verifyHost.c_str());
  }
}

void TlsChannel::recordError(const char* what, int ret) {
  char buf[256];
  unsigned long e = ERR_peek_last_error();
  std::string reason;
  if (e != 0) {
    ERR_error_string_n(e, buf, sizeof(buf));
    const char* r = ERR_reason_error_string(e);
    reason = r != nullptr ? r : buf;
  }
  if (ssl_ != nullptr) {
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK) {
      reason = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
    }
  }
  if (reason.empty()) {
    int err = ssl_ != nullptr ? SSL_get_error(ssl_, ret) : 0;
    if (outOfBuffers_) {
      reason = "out of TLS buffers (buffer_pool)";
    } else if (err == SSL_ERROR_SYSCALL) {
      reason = errno != 0 ? std::strerror(errno) : "connection closed by peer";
    } else {
      reason = "error " + std::to_string(err);
    }
  }
  error_ = std::string(what) + ": " + reason;
  ERR_clear_error();
}

TlsChannel::Step TlsChannel::stepAfter(int ret, const char* what, bool reading) {
  if (ret == 1) {
    return Step::Done;
  }
  switch (SSL_get_error(ssl_, ret)) {
    case SSL_ERROR_WANT_READ:
      return Step::WantRead;
    case SSL_ERROR_WANT_WRITE:
      return Step::WantWrite;
    case SSL_ERROR_ZERO_RETURN:
      if (reading) {
        return Step::Done;  // close_notify: 0 bytes read
      }
      [[fallthrough]];
    default:
      recordError(what, ret);
      return Step::Failed;
  }
}

TlsChannel::Step TlsChannel::handshake() {
  ERR_clear_error();
  errno = 0;
  return stepAfter(SSL_do_handshake(ssl_), "handshake");
}

TlsChannel::Step TlsChannel::sendDirect(const void* data, size_t len, size_t* moved) {
  ERR_clear_error();
  errno = 0;
  *moved = 0;
  return stepAfter(SSL_write_ex(ssl_, data, len, moved), "write");
}

TlsChannel::Step TlsChannel::receiveDirect(void* data, size_t len, size_t* moved) {
  ERR_clear_error();
  errno = 0;
  *moved = 0;
  return stepAfter(SSL_read_ex(ssl_, data, len, moved), "read", true);
}

bool TlsChannel::ktls() const {
  return ktlsSend() && ktlsReceive();
}
bool TlsChannel::ktlsSend() const {
  return BIO_get_ktls_send(SSL_get_wbio(ssl_));
}
bool TlsChannel::ktlsReceive() const {
  return BIO_get_ktls_recv(SSL_get_rbio(ssl_));
}

bool TlsChannel::useMemoryBio(bool receive, bool send) {
  if (!receive && !send) {
    return true;
  }
  BIO* bio = BIO_new(method());
  if (bio == nullptr) {
    recordError("BIO_new", 0);
    return false;
  }
  BIO_set_data(bio, this);
  BIO_set_init(bio, 1);
  if (receive && send) {
    SSL_set_bio(ssl_, bio, bio);  // rbio == wbio: takes our one reference
  } else if (receive) {
    SSL_set0_rbio(ssl_, bio);  // the socket BIO (kernel TLS) keeps sending
  } else {
    SSL_set0_wbio(ssl_, bio);
  }
  return true;
}

void TlsChannel::feed(ChunkRef ciphertext) {
  inBytes_ += ciphertext.size();
  in_.push_back(Inbound{std::move(ciphertext), 0});
}

TlsChannel::ReadStatus TlsChannel::read(ChunkRef* plaintext) {
  ChunkRef chunk = pool_.allocate();
  if (!chunk) {
    outOfBuffers_ = true;
    error_ = "out of TLS buffers (buffer_pool)";
    return ReadStatus::Failed;
  }
  Chunk* c = chunk.get();
  ERR_clear_error();
  // Fill the buffer with as many records as are available: fewer, larger chunks.
  while (c->length < c->capacity) {
    int ret = SSL_read(ssl_, c->data + c->length, static_cast<int>(c->capacity - c->length));
    if (ret > 0) {
      c->length += static_cast<uint32_t>(ret);
      continue;
    }
    int err = SSL_get_error(ssl_, ret);
    if (c->length > 0) {
      break;  // deliver what we have; the next read reports the condition again
    }
    if (err == SSL_ERROR_WANT_READ) {
      return ReadStatus::NeedMore;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      return ReadStatus::Closed;
    }
    recordError("decrypt", ret);
    return ReadStatus::Failed;
  }
  *plaintext = std::move(chunk);
  return ReadStatus::Data;
}

bool TlsChannel::write(const uint8_t* data, size_t len) {
  ERR_clear_error();
  size_t done = 0;
  while (done < len) {
    size_t written = 0;
    int ret = SSL_write_ex(ssl_, data + done, len - done, &written);
    if (ret != 1) {
      recordError("encrypt", ret);
      return false;
    }
    done += written;
  }
  return true;
}

void TlsChannel::shutdown() {
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

void TlsChannel::takeOutbound(std::vector<ChunkRef>& out) {
  for (auto& c : out_) {
    out.push_back(std::move(c));
  }
  out_.clear();
  if (current_ && current_.size() > 0) {
    out.push_back(std::move(current_));
    current_.reset();
  }
}

std::string TlsChannel::describe() const {
  return std::string(SSL_get_version(ssl_)) + " " + SSL_get_cipher_name(ssl_);
}

const char* TlsChannel::version() const {
  return SSL_get_version(ssl_);
}

const char* TlsChannel::cipher() const {
  return SSL_get_cipher_name(ssl_);
}

bool TlsChannel::established() const {
  return SSL_is_init_finished(ssl_) == 1;
}

bool TlsChannel::resumed() const {
  return SSL_session_reused(ssl_) == 1;
}

std::string_view TlsChannel::serverName() const {
  const char* name = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
  return name != nullptr ? std::string_view(name) : std::string_view();
}

std::string_view TlsChannel::alpn() const {
  const unsigned char* data = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl_, &data, &length);
  return data != nullptr ? std::string_view(reinterpret_cast<const char*>(data), length)
                         : std::string_view();
}

TlsChannel::PeerCertificate TlsChannel::peerCertificate() const {
  PeerCertificate out;
  X509* cert = SSL_get0_peer_certificate(ssl_);
  if (cert == nullptr) {
    return out;
  }
  out.present = true;
  X509_NAME* name = X509_get_subject_name(cert);
  const int at = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (at >= 0) {
    unsigned char* utf8 = nullptr;
    const int length =
        ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, at)));
    if (length > 0) {
      out.commonName.assign(reinterpret_cast<const char*>(utf8), static_cast<size_t>(length));
    }
    OPENSSL_free(utf8);
  }
  out.subject = rfc2253(name);
  return out;
}

std::string rfc2253(const X509_NAME* name) {
  std::string out;
  if (BIO* text = BIO_new(BIO_s_mem())) {
    if (X509_NAME_print_ex(text, name, 0, XN_FLAG_RFC2253) >= 0) {
      char* data = nullptr;
      const long length = BIO_get_mem_data(text, &data);
      if (length > 0) {
        out.assign(data, static_cast<size_t>(length));
      }
    }
    BIO_free(text);
  }
  return out;
}

int TlsChannel::bioRead(BIO* bio, char* buf, int len) {
  auto* self = static_cast<TlsChannel*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (self->in_.empty()) {
    BIO_set_retry_read(bio);
    return -1;
  }
  int copied = 0;
  while (copied < len && !self->in_.empty()) {
    Inbound& front = self->in_.front();
    uint32_t avail = front.chunk.size() - front.offset;
    uint32_t n = std::min<uint32_t>(avail, static_cast<uint32_t>(len - copied));
    std::memcpy(buf + copied, front.chunk.data() + front.offset, n);
    copied += static_cast<int>(n);
    front.offset += n;
    self->inBytes_ -= n;
    if (front.offset == front.chunk.size()) {
      self->in_.pop_front();
    }
  }
  return copied;
}

int TlsChannel::bioWrite(BIO* bio, const char* buf, int len) {
  auto* self = static_cast<TlsChannel*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  int written = 0;
  while (written < len) {
    Chunk* c = self->current_.get();
    if (c == nullptr || c->length == c->capacity) {
      if (c != nullptr) {
        self->out_.push_back(std::move(self->current_));
      }
      // Room for output was checked before encrypting (UserBufferPool::available()).
      self->current_ = self->pool_.allocate(true);
      if (!self->current_) {
        self->outOfBuffers_ = true;
        return written > 0 ? written : -1;
      }
      c = self->current_.get();
    }
    uint32_t n = std::min<uint32_t>(c->capacity - c->length, static_cast<uint32_t>(len - written));
    std::memcpy(c->data + c->length, buf + written, n);
    c->length += n;
    written += static_cast<int>(n);
  }
  return written;
}

long TlsChannel::bioCtrl(BIO* bio, int cmd, long, void*) {
  auto* self = static_cast<TlsChannel*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_PENDING:
      return static_cast<long>(self->inBytes_);
    case BIO_CTRL_WPENDING:
      return 0;
    default:
      return 0;
  }
}

namespace {
constexpr uint8_t kRecordChangeCipherSpec = 20;
constexpr uint8_t kRecordAlert = 21;
constexpr uint8_t kRecordHandshake = 22;
constexpr uint8_t kRecordApplicationData = 23;
constexpr uint8_t kAlertWarning = 1;
constexpr uint8_t kAlertCloseNotify = 0;
constexpr uint8_t kHelloRequest = 0;
constexpr uint8_t kNewSessionTicket = 4;
}  // namespace

int ktlsControlRecord(uint8_t type, const uint8_t* body, size_t length, std::string* what) {
  if (type == kRecordAlert && length >= 2) {
    const uint8_t level = body[0];
    const uint8_t description = body[1];
    *what = std::string(level == kAlertWarning ? "warning" : "fatal") + " alert " +
            SSL_alert_desc_string_long(description);
    if (description == kAlertCloseNotify) {
      return 0;
    }
    // RFC 5246 7.2: a warning other than close_notify may be ignored (user_canceled is
    // followed by close_notify, no_renegotiation answers a request we never make).
    return level == kAlertWarning ? -EAGAIN : -ECONNRESET;
  }
  if (type == kRecordHandshake && length >= 1) {
    switch (body[0]) {
      case kHelloRequest:
        // A server asking for renegotiation; a client may ignore it (RFC 5246 7.4.1.1).
        *what = "a HelloRequest (renegotiation is off)";
        return -EAGAIN;
      case kNewSessionTicket:
        *what = "a session ticket (sessions are not resumed)";
        return -EAGAIN;
      default:
        *what = "handshake message " + std::to_string(body[0]) +
                " after the handshake (renegotiation or key update), which kernel TLS "
                "cannot follow";
        return -EPROTO;
    }
  }
  *what = type == kRecordChangeCipherSpec ? "a change_cipher_spec record after the handshake"
          : type == kRecordAlert          ? "a truncated alert"
          : type == kRecordHandshake      ? "an empty handshake record"
                                          : "a record of unknown type " + std::to_string(type);
  return -EPROTO;
}

int readKtlsRecord(int fd, uint8_t* type, uint8_t* body, size_t length) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(uint8_t))] = {};
  iovec iov{body, length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  if (n < 0) {
    return -errno;
  }
  *type = kRecordApplicationData;  // unless a control message says otherwise
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) {
      *type = *CMSG_DATA(c);
    }
  }
  return static_cast<int>(n);
}

}  // namespace grelay::relay
