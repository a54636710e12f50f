#include "proxy/ocsp.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <map>
#include <system_error>
#include <thread>

#include "config/loader.h"
#include "proxy/log.h"
#include "proxy/tls_util.h"

namespace grelay::proxy {
namespace {

// The response's entry for `leaf`, matched by certificate ID with whichever hash the
// responder used; nullptr if it has none.
OCSP_SINGLERESP* findOcspEntry(OCSP_BASICRESP* basic, X509* leaf, X509* issuer) {
  for (const EVP_MD* md : {EVP_sha1(), EVP_sha256(), EVP_sha384(), EVP_sha512()}) {
    OCSP_CERTID* id = OCSP_cert_to_id(md, leaf, issuer);
    const int at = id != nullptr ? OCSP_resp_find(basic, id, -1) : -1;
    OCSP_CERTID_free(id);
    if (at >= 0) {
      return OCSP_resp_get0(basic, at);
    }
  }
  return nullptr;
}

// Whether `basic` is signed by the certificate's issuer or a responder the issuer
// authorised (OCSP signing); the reason when not.
std::string ocspSignatureProblem(OCSP_BASICRESP* basic, const OcspSubject& subject) {
  X509_STORE* store = X509_STORE_new();
  std::string problem;
  if (store == nullptr || X509_STORE_add_cert(store, subject.issuer()) != 1) {
    problem = takeOpensslError();
  } else {
    // The issuer is trusted as it stands: it may be an intermediate CA.
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    if (OCSP_basic_verify(basic, subject.chain(), store, 0) != 1) {
      // With the verifier's own words ("Verify error:unable to get local issuer
      // certificate") when it left them.
      const char* data = nullptr;
      int flags = 0;
      ERR_peek_last_error_data(&data, &flags);
      const std::string detail = data != nullptr && (flags & ERR_TXT_STRING) != 0 ? data : "";
      problem = takeOpensslError() + (detail.empty() ? "" : " (" + detail + ")");
    }
  }
  X509_STORE_free(store);
  return problem;
}

constexpr const char* kStopped = "stopped";

std::vector<config::Address> systemResolve(const std::string& text, std::string* error) {
  return config::resolveAddresses(text, error);
}

int64_t monotonicMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Waits until `fd` is ready for `events`, `deadline` (monotonic ms) passes (false, "timed
// out") or `stopFd` is readable (false, "stopped").
bool waitFor(int fd, short events, int64_t deadline, int stopFd, int timeoutMs,
             std::string* error) {
  for (;;) {
    const int64_t left = deadline - monotonicMs();
    if (left <= 0) {
      *error = "no answer within " + std::to_string(timeoutMs / 1000) + "s";
      return false;
    }
    pollfd fds[2] = {{fd, events, 0}, {stopFd, POLLIN, 0}};
    const int n = poll(fds, stopFd >= 0 ? 2 : 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      *error = std::string("poll: ") + std::strerror(errno);
      return false;
    }
    if (stopFd >= 0 && (fds[1].revents & POLLIN) != 0) {
      *error = kStopped;
      return false;
    }
    if (fds[0].revents != 0) {
      return true;
    }
  }
}

// The addresses of `url`'s host and port, looked up by `resolve` in a thread of its own and
// waited for within `deadline` and `stopFd`: a resolver that hangs (a DNS server gone) holds
// neither SIGTERM nor the next fetch past the deadline. The thread is detached and shares
// its state: left behind, it frees that state when its lookup returns.
std::optional<std::vector<config::Address>> lookUp(const config::HttpUrl& url,
                                                   const OcspResolve& resolve, int64_t deadline,
                                                   int stopFd, int timeoutMs, std::string* error) {
  struct Lookup {
    int doneFd = -1;
    std::atomic<bool> done{false};
    std::vector<config::Address> answers;
    std::string error;
    ~Lookup() {
      if (doneFd >= 0) {
        close(doneFd);
      }
    }
  };
  auto lookup = std::make_shared<Lookup>();
  lookup->doneFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (lookup->doneFd < 0) {
    *error = std::string("eventfd: ") + std::strerror(errno);
    return std::nullopt;
  }
  const bool v6 = url.host.find(':') != std::string::npos;
  std::string text = (v6 ? "[" + url.host + "]" : url.host) + ":" + std::to_string(url.port);
  try {
    std::thread([lookup, text = std::move(text), resolve] {
      lookup->answers = resolve(text, &lookup->error);
      lookup->done.store(true, std::memory_order_release);
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = write(lookup->doneFd, &one, sizeof(one));
    }).detach();
  } catch (const std::system_error& e) {
    *error = std::string("cannot start a lookup of ") + url.host + ": " + e.what();
    return std::nullopt;
  }
  if (!waitFor(lookup->doneFd, POLLIN, deadline, stopFd, timeoutMs, error)) {
    if (*error != kStopped) {
      *error = "cannot resolve " + url.host + ": " + *error;
    }
    return std::nullopt;
  }
  if (!lookup->done.load(std::memory_order_acquire) || lookup->answers.empty()) {
    *error = lookup->error.empty() ? "cannot resolve " + url.host : lookup->error;
    return std::nullopt;
  }
  return std::move(lookup->answers);
}

// A connected non-blocking socket to `url`'s host and port (each of its addresses in turn),
// or -1 with `error` set.
int connectTo(const config::HttpUrl& url, const OcspResolve& resolve, int64_t deadline, int stopFd,
              int timeoutMs, std::string* error) {
  const std::optional<std::vector<config::Address>> addresses =
      lookUp(url, resolve, deadline, stopFd, timeoutMs, error);
  if (!addresses) {
    return -1;
  }
  int fd = -1;
  for (const config::Address& a : *addresses) {
    fd = socket(a.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *error = std::string("socket: ") + std::strerror(errno);
      continue;
    }
    int rc = connect(fd, a.sockaddrPtr(), a.length);
    if (rc != 0 && errno == EINPROGRESS) {
      if (!waitFor(fd, POLLOUT, deadline, stopFd, timeoutMs, error)) {
        close(fd);
        fd = -1;
        break;
      }
      int soError = 0;
      socklen_t len = sizeof(soError);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len);
      rc = soError == 0 ? 0 : -1;
      errno = soError;
    }
    if (rc != 0) {
      *error = std::string("connect: ") + std::strerror(errno);
      close(fd);
      fd = -1;
      continue;
    }
    break;
  }
  return fd;
}

constexpr size_t kMaxOcspHttpResponse = 1 << 20;

// The body of an HTTP/1.x response `raw` (whole, or cut at EOF), or nullopt with `error`.
std::optional<std::string> httpBody(const std::string& raw, bool complete, std::string* error) {
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) {
    *error = raw.empty() ? "the responder closed without answering" : "not an HTTP response";
    return std::nullopt;
  }
  const std::string head = raw.substr(0, end);
  const size_t lineEnd = head.find("\r\n");
  const std::string status = head.substr(0, lineEnd);
  if (!status.starts_with("HTTP/1.") || status.size() < 12 || status[8] != ' ') {
    *error = "not an HTTP response";
    return std::nullopt;
  }
  if (status.compare(9, 3, "200") != 0) {
    *error = "the responder answered " + status.substr(9);
    return std::nullopt;
  }
  std::optional<size_t> length;
  size_t at = lineEnd;
  while (at != std::string::npos && at < head.size()) {
    const size_t next = head.find("\r\n", at + 2);
    std::string line =
        head.substr(at + 2, next == std::string::npos ? std::string::npos : next - at - 2);
    std::transform(line.begin(), line.end(), line.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (line.starts_with("content-length:")) {
      length = std::strtoull(line.c_str() + 15, nullptr, 10);
    } else if (line.starts_with("transfer-encoding:") &&
               line.find("chunked") != std::string::npos) {
      *error = "the responder sent a chunked body to an HTTP/1.0 request";
      return std::nullopt;
    }
    at = next;
  }
  std::string body = raw.substr(end + 4);
  if (length && body.size() < *length) {
    *error = "the responder closed after " + std::to_string(body.size()) + " of " +
             std::to_string(*length) + " bytes";
    return std::nullopt;
  }
  if (length) {
    body.resize(*length);
  } else if (!complete) {
    *error = "the answer was cut";
    return std::nullopt;
  }
  return body;
}

}  // namespace

std::shared_ptr<const OcspSubject> OcspSubject::of(SSL_CTX* ctx) {
  X509* leaf = SSL_CTX_get0_certificate(ctx);
  STACK_OF(X509)* chain = nullptr;
  SSL_CTX_get0_chain_certs(ctx, &chain);
  X509* issuer = nullptr;
  for (int i = 0; leaf != nullptr && i < sk_X509_num(chain); ++i) {
    X509* candidate = sk_X509_value(chain, i);
    if (X509_check_issued(candidate, leaf) == X509_V_OK) {
      issuer = candidate;
      break;
    }
  }
  if (issuer == nullptr) {
    return nullptr;
  }
  std::shared_ptr<OcspSubject> subject(new OcspSubject());
  X509_up_ref(leaf);
  subject->leaf_ = leaf;
  X509_up_ref(issuer);
  subject->issuer_ = issuer;
  subject->chain_ = X509_chain_up_ref(chain);
  return subject;
}

OcspSubject::~OcspSubject() {
  X509_free(leaf_);
  X509_free(issuer_);
  sk_X509_pop_free(chain_, X509_free);
}

std::string ocspResponderUrl(X509* leaf) {
  if (leaf == nullptr) {
    return "";
  }
  STACK_OF(OPENSSL_STRING)* urls = X509_get1_ocsp(leaf);
  std::string url = sk_OPENSSL_STRING_num(urls) > 0 ? sk_OPENSSL_STRING_value(urls, 0) : "";
  X509_email_free(urls);
  return url;
}

std::string OcspSubject::request() const {
  OCSP_REQUEST* request = OCSP_REQUEST_new();
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), leaf_, issuer_);
  std::string out;
  if (request != nullptr && id != nullptr && OCSP_request_add0_id(request, id) != nullptr) {
    id = nullptr;  // the request's now
    unsigned char* der = nullptr;
    const int n = i2d_OCSP_REQUEST(request, &der);
    if (n > 0) {
      out.assign(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    }
    OPENSSL_free(der);
  }
  OCSP_CERTID_free(id);
  OCSP_REQUEST_free(request);
  return out;
}

OcspVerdict checkOcspResponse(std::string der, const OcspSubject& subject,
                              const std::string& certFile) {
  OcspVerdict verdict;
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  std::unique_ptr<OCSP_RESPONSE, decltype(&OCSP_RESPONSE_free)> response(
      d2i_OCSP_RESPONSE(nullptr, &p, static_cast<long>(der.size())), OCSP_RESPONSE_free);
  if (response == nullptr || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    ERR_clear_error();
    verdict.problem = "not an OCSP response in DER (openssl ocsp -respout writes one)";
    return verdict;
  }
  if (const int status = OCSP_response_status(response.get());
      status != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
    verdict.problem =
        std::string("the responder did not answer: ") + OCSP_response_status_str(status);
    return verdict;
  }
  std::unique_ptr<OCSP_BASICRESP, decltype(&OCSP_BASICRESP_free)> basic(
      OCSP_response_get1_basic(response.get()), OCSP_BASICRESP_free);
  if (basic == nullptr) {
    ERR_clear_error();
    verdict.problem = "not a basic OCSP response";
    return verdict;
  }
  OCSP_SINGLERESP* entry = findOcspEntry(basic.get(), subject.leaf(), subject.issuer());
  if (entry == nullptr) {
    verdict.problem = "it is not about the certificate in cert file '" + certFile + "'";
    return verdict;
  }
  int reason = 0;
  ASN1_GENERALIZEDTIME* revoked = nullptr;
  ASN1_GENERALIZEDTIME* thisUpdate = nullptr;
  ASN1_GENERALIZEDTIME* nextUpdate = nullptr;
  const int status = OCSP_single_get0_status(entry, &reason, &revoked, &thisUpdate, &nextUpdate);
  if (status == V_OCSP_CERTSTATUS_REVOKED) {
    const std::optional<int64_t> when = unixTime(revoked);
    verdict.result = OcspVerdict::Result::kRevoked;
    verdict.problem = "it says the certificate in cert file '" + certFile + "' was revoked" +
                      (when ? " at " + isoTime(*when) : std::string()) +
                      ": clients that check refuse it; get a new certificate";
    return verdict;
  }
  if (status != V_OCSP_CERTSTATUS_GOOD) {
    verdict.problem = "its responder does not know the certificate in cert file '" + certFile + "'";
    return verdict;
  }
  if (const std::string problem = ocspSignatureProblem(basic.get(), subject); !problem.empty()) {
    verdict.problem = "its signature does not verify against the issuer in cert file '" + certFile +
                      "': " + problem;
    return verdict;
  }
  auto staple = std::make_shared<OcspStaple>();
  staple->thisUpdate = unixTime(thisUpdate).value_or(0);
  staple->nextUpdate = unixTime(nextUpdate);
  staple->der = std::move(der);
  verdict.result = OcspVerdict::Result::kGood;
  verdict.staple = std::move(staple);
  return verdict;
}

OcspSlot::OcspSlot() : stats_(std::make_shared<metrics::OcspUpdateStats>()) {}

std::shared_ptr<const OcspStaple> OcspSlot::staple() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return staple_;
}

void OcspSlot::offer(std::shared_ptr<const OcspStaple> staple) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (staple_ == nullptr || staple == nullptr || staple->thisUpdate >= staple_->thisUpdate) {
    staple_ = std::move(staple);
  }
  publish();
}

void OcspSlot::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  staple_.reset();
  publish();
}

void OcspSlot::publish() {
  stats_->nextUpdate.store(staple_ == nullptr    ? 0
                           : staple_->nextUpdate ? *staple_->nextUpdate
                                                 : metrics::OcspUpdateStats::kNoNextUpdate,
                           std::memory_order_relaxed);
}

std::shared_ptr<OcspSlot> sharedOcspSlot(const std::string& listener, const OcspSubject& subject) {
  static std::mutex mutex;
  static std::map<std::string, std::weak_ptr<OcspSlot>> slots;
  // Keyed by the listener and the certificate's ID (its issuer's name and key, its serial).
  std::string key = listener + '\0';
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), subject.leaf(), subject.issuer());
  unsigned char* der = nullptr;
  const int n = id != nullptr ? i2d_OCSP_CERTID(id, &der) : 0;
  key.append(reinterpret_cast<const char*>(der), n > 0 ? static_cast<size_t>(n) : 0);
  OPENSSL_free(der);
  OCSP_CERTID_free(id);
  std::lock_guard<std::mutex> lock(mutex);
  std::erase_if(slots, [](const auto& s) { return s.second.expired(); });
  std::weak_ptr<OcspSlot>& held = slots[key];
  std::shared_ptr<OcspSlot> slot = held.lock();
  if (slot == nullptr) {
    slot = std::make_shared<OcspSlot>();
    held = slot;
  }
  return slot;
}

int64_t nextOcspFetch(const OcspStaple* staple, int64_t nowMs, config::Duration minDelay,
                      config::Duration maxDelay) {
  const int64_t min = minDelay.count();
  const int64_t max = std::max(min, static_cast<int64_t>(maxDelay.count()));
  if (staple == nullptr) {
    return nowMs + min;
  }
  if (!staple->nextUpdate) {
    return nowMs + max;
  }
  const int64_t halfway =
      (staple->thisUpdate + (*staple->nextUpdate - staple->thisUpdate) / 2) * 1000;
  return nowMs + std::clamp(halfway - nowMs, min, max);
}

std::optional<std::string> postOcspRequest(const config::HttpUrl& url, const std::string& request,
                                           int timeoutMs, int stopFd, std::string* error,
                                           const config::HttpUrl* proxy,
                                           const OcspResolve& resolve) {
  const int64_t deadline = monotonicMs() + timeoutMs;
  const int fd =
      connectTo(proxy != nullptr ? *proxy : url, resolve ? resolve : OcspResolve(systemResolve),
                deadline, stopFd, timeoutMs, error);
  if (fd < 0) {
    if (proxy != nullptr) {
      *error = "proxy " + proxy->host + ":" + std::to_string(proxy->port) + ": " + *error;
    }
    return std::nullopt;
  }
  const bool v6 = url.host.find(':') != std::string::npos;
  const std::string host = (v6 ? "[" + url.host + "]" : url.host) +
                           (url.port == 80 ? "" : ":" + std::to_string(url.port));
  // (A proxy is given the absolute form of the URL, RFC 9112 3.2.2.)
  const std::string target = (proxy != nullptr ? "http://" + host : "") + url.path;
  const std::string out = "POST " + target + " HTTP/1.0\r\nHost: " + host +
                          "\r\nContent-Type: application/ocsp-request\r\nContent-Length: " +
                          std::to_string(request.size()) +
                          "\r\nAccept: application/ocsp-response\r\nConnection: close\r\n\r\n" +
                          request;
  size_t sent = 0;
  std::string raw;
  bool complete = false;
  bool ok = true;
  while (ok && sent < out.size()) {
    const ssize_t n = send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      ok = waitFor(fd, POLLOUT, deadline, stopFd, timeoutMs, error);
    } else {
      *error = std::string("send: ") + std::strerror(errno);
      ok = false;
    }
  }
  char buffer[16384];
  while (ok && !complete) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      raw.append(buffer, static_cast<size_t>(n));
      if (raw.size() > kMaxOcspHttpResponse + sizeof(buffer)) {
        *error = "the responder sent more than 1 MiB";
        ok = false;
      }
    } else if (n == 0) {
      complete = true;
    } else if (errno == EAGAIN || errno == EINTR) {
      ok = waitFor(fd, POLLIN, deadline, stopFd, timeoutMs, error);
    } else {
      *error = std::string("recv: ") + std::strerror(errno);
      ok = false;
    }
  }
  close(fd);
  if (!ok) {
    return std::nullopt;
  }
  return httpBody(raw, complete, error);
}

struct OcspUpdater::Entry {
  OcspWatch watch;
  int64_t due = 0;  // Unix ms
};

OcspUpdater::OcspUpdater()
    : wakeFd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      stopFd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

OcspUpdater::~OcspUpdater() {
  stop();
  if (wakeFd_ >= 0) {
    close(wakeFd_);
  }
  if (stopFd_ >= 0) {
    close(stopFd_);
  }
}

bool OcspUpdater::watch(std::vector<OcspWatch> watches, std::string* error) {
  const int64_t now = wallMs();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::shared_ptr<Entry>> next;
    for (OcspWatch& w : watches) {
      auto entry = std::make_shared<Entry>();
      const auto same = std::find_if(entries_.begin(), entries_.end(),
                                     [&](const auto& e) { return e->watch.slot == w.slot; });
      if (same != entries_.end() && (*same)->watch.url == w.url) {
        // (Within the new max delay, when a reload shortened it.)
        entry->due = std::min((*same)->due, now + static_cast<int64_t>(w.maxDelay.count()));
      } else {
        const std::shared_ptr<const OcspStaple> staple = w.slot->staple();
        entry->due = staple != nullptr && staple->currentAt(now / 1000)
                         ? nextOcspFetch(staple.get(), now, w.minDelay, w.maxDelay)
                         : now;
      }
      entry->watch = std::move(w);
      next.push_back(std::move(entry));
    }
    entries_ = std::move(next);
  }
  if (wakeFd_ < 0 || stopFd_ < 0) {
    *error = std::string("eventfd: ") + std::strerror(errno);
    return false;
  }
  if (!thread_.joinable() && !entries_.empty()) {
    try {
      thread_ = std::thread([this] { run(); });
    } catch (const std::system_error& e) {
      *error = std::string("cannot start the OCSP update thread: ") + e.what();
      return false;
    }
  }
  const uint64_t one = 1;
  (void)!write(wakeFd_, &one, sizeof(one));
  return true;
}

void OcspUpdater::stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!write(stopFd_, &one, sizeof(one));
    thread_.join();
  }
}

void OcspUpdater::run() {
  for (;;) {
    std::shared_ptr<Entry> due;
    int64_t wait = -1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const int64_t now = wallMs();
      for (const std::shared_ptr<Entry>& e : entries_) {
        if (e->due <= now) {
          due = e;
          break;
        }
        wait = wait < 0 ? e->due - now : std::min(wait, e->due - now);
      }
    }
    if (due != nullptr) {
      fetch(*due);
      uint64_t count = 0;
      if (read(stopFd_, &count, sizeof(count)) == sizeof(count)) {
        return;
      }
      continue;
    }
    // (Waits at most a minute at a time, so a wall clock that jumps is caught up with.)
    pollfd fds[2] = {{wakeFd_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
    const int n =
        poll(fds, 2, static_cast<int>(wait < 0 ? 60'000 : std::min<int64_t>(wait, 60'000)));
    if (n > 0 && (fds[1].revents & POLLIN) != 0) {
      return;
    }
    uint64_t count = 0;
    (void)!read(wakeFd_, &count, sizeof(count));
  }
}

void OcspUpdater::fetch(Entry& entry) {
  const OcspWatch& w = entry.watch;
  std::string error;
  const std::optional<std::string> body =
      postOcspRequest(w.responder, w.subject->request(), kOcspFetchTimeoutMs, stopFd_, &error,
                      w.proxy ? &*w.proxy : nullptr);
  if (!body && error == kStopped) {
    return;  // grelay is stopping: not a failure of the responder's
  }
  OcspVerdict verdict;
  if (body) {
    verdict = checkOcspResponse(*body, *w.subject, w.certFile);
    error = verdict.problem;
  }
  const int64_t now = wallMs();
  std::shared_ptr<const OcspStaple> staple = verdict.staple;
  if (staple != nullptr && !staple->currentAt(now / 1000)) {
    error = staple->nextUpdate && now / 1000 >= *staple->nextUpdate
                ? "it expired at " + isoTime(*staple->nextUpdate) + " (nextUpdate)"
                : "it is not valid before " + isoTime(staple->thisUpdate) + " (thisUpdate)";
    staple.reset();
  }
  const std::string what =
      "listener " + w.listener + ": OCSP response for cert file '" + w.certFile + "' from " +
      w.url +
      (w.proxy ? " through proxy " + w.proxy->host + ":" + std::to_string(w.proxy->port) : "");
  metrics::OcspUpdateStats& stats = *w.slot->stats();
  if (staple != nullptr) {
    w.slot->offer(staple);
    stats.ok.inc();
    GRELAY_LOG_INFO("%s: updated, %s", what.c_str(),
                    staple->nextUpdate ? ("good until " + isoTime(*staple->nextUpdate)).c_str()
                                       : "good (no nextUpdate)");
  } else if (verdict.result == OcspVerdict::Result::kRevoked) {
    w.slot->clear();
    stats.failed.inc();
    GRELAY_LOG_ERROR("%s: %s; nothing is stapled for it", what.c_str(), error.c_str());
  } else {
    stats.failed.inc();
    const std::shared_ptr<const OcspStaple> held = w.slot->staple();
    const bool current = held != nullptr && held->currentAt(now / 1000);
    GRELAY_LOG_WARN(
        "%s failed: %s; %s", what.c_str(), error.c_str(),
        !current ? "nothing is stapled for it until an update succeeds"
        : held->nextUpdate
            ? ("the response stapled stays, until " + isoTime(*held->nextUpdate)).c_str()
            : "the response stapled stays");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  entry.due = nextOcspFetch(staple.get(), now, w.minDelay, w.maxDelay);
}

}  // namespace grelay::proxy
