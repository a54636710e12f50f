// OCSP stapling: the responses a TLS listener staples, checked against the certificate they
// are about, and the thread that fetches them from the CAs' responders (ocsp_update).
//
// A context that staples holds an OcspSlot; the status callback takes the slot's response
// under its lock, so the fetcher can replace it while handshakes go on. With ocsp_update a
// slot is shared by every generation that serves the certificate on that listener, so a
// reload keeps the response fetched last (and its schedule) instead of starting without.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"

namespace grelay::proxy {

// Clocks differ: a response is stapled from a little before its thisUpdate.
inline constexpr int64_t kOcspClockSkew = 300;

// An OCSP response to staple: the DER bytes as the CA's responder gave them, and the
// window in which they are current.
struct OcspStaple {
  std::string der;
  int64_t thisUpdate = 0;
  std::optional<int64_t> nextUpdate;  // none: current until replaced

  // Whether it may be stapled at `now` (Unix seconds).
  bool currentAt(int64_t now) const {
    return now + kOcspClockSkew >= thisUpdate && (!nextUpdate || now < *nextUpdate);
  }
};

// The certificate a response is about: the server's, its issuer (which signs the
// responses, or authorises the responder that does) and the chain the context sends.
// Holds references of its own, so it outlives the context it was taken from.
class OcspSubject {
public:
  // nullptr when `ctx` has no certificate, or its chain no issuer for it.
  static std::shared_ptr<const OcspSubject> of(SSL_CTX* ctx);
  ~OcspSubject();
  OcspSubject(const OcspSubject&) = delete;
  OcspSubject& operator=(const OcspSubject&) = delete;

  X509* leaf() const { return leaf_; }
  X509* issuer() const { return issuer_; }
  STACK_OF(X509) * chain() const { return chain_; }
  // A DER OCSP request for the certificate (SHA-1 certificate ID, no nonce, as RFC 5019
  // profiles it for responders that cache).
  std::string request() const;

private:
  OcspSubject() = default;
  X509* leaf_ = nullptr;
  X509* issuer_ = nullptr;
  STACK_OF(X509) * chain_ = nullptr;
};

// The OCSP responder `leaf` names (its first authorityInfoAccess OCSP URL), "" if none.
std::string ocspResponderUrl(X509* leaf);

// What a response says about a certificate.
struct OcspVerdict {
  enum class Result { kGood, kRevoked, kBad };
  Result result = Result::kBad;
  std::shared_ptr<const OcspStaple> staple;  // kGood: what to staple
  // Otherwise why it cannot be stapled, naming the certificate as "the certificate in cert
  // file 'CERT'" ("it says the certificate in cert file 'a.pem' was revoked at ...").
  std::string problem;
};

// Checks a DER response: a successful basic response about `subject`'s certificate (by its
// ID, whichever hash the responder used), status good, signed by the issuer or a responder
// it authorised. `certFile` names the certificate in problems. (Dates are the caller's.)
OcspVerdict checkOcspResponse(std::string der, const OcspSubject& subject,
                              const std::string& certFile);

// One certificate's response, as stapled now, and what its fetcher did.
class OcspSlot {
public:
  OcspSlot();
  std::shared_ptr<const OcspStaple> staple() const;
  // Staples `staple` unless the one held is newer (a later thisUpdate).
  void offer(std::shared_ptr<const OcspStaple> staple);
  // Staples nothing (the responder says the certificate is revoked).
  void clear();
  const std::shared_ptr<metrics::OcspUpdateStats>& stats() const { return stats_; }

private:
  void publish();  // under mutex_
  mutable std::mutex mutex_;
  std::shared_ptr<const OcspStaple> staple_;
  std::shared_ptr<metrics::OcspUpdateStats> stats_;
};

// The slot of `listener`'s certificate `subject` shared by every context (of any generation
// still running) that serves it with ocsp_update; a new one if there is none.
std::shared_ptr<OcspSlot> sharedOcspSlot(const std::string& listener, const OcspSubject& subject);

// What the fetcher keeps up to date: one certificate of a listener with ocsp_update.
struct OcspWatch {
  std::shared_ptr<OcspSlot> slot;
  std::shared_ptr<const OcspSubject> subject;
  std::string listener;
  std::string certFile;
  std::string url;  // the responder, as written (ocsp_responder or the certificate's)
  config::HttpUrl responder;
  std::optional<config::HttpUrl> proxy;  // ocsp_proxy
  config::Duration minDelay{300'000};
  config::Duration maxDelay{3'600'000};
};

// When to fetch a certificate's response again (Unix milliseconds), having `staple`
// (nullptr: none, or the last fetch failed) at `nowMs`: halfway through the staple's
// validity (thisUpdate..nextUpdate), but no sooner than `minDelay` and no later than
// `maxDelay` from now (HAProxy's ocsp-update schedule).
int64_t nextOcspFetch(const OcspStaple* staple, int64_t nowMs, config::Duration minDelay,
                      config::Duration maxDelay);

// POSTs a DER OCSP request to `url` over HTTP/1.0 (through the HTTP proxy `proxy` if set:
// the request names the whole URL) and returns the response's body; nullopt with `error`
// set when the responder (or proxy) cannot be reached, answers other than 200, sends more
// than 1 MiB, or does not finish within `timeoutMs`, or when `stopFd` becomes readable.
// The responder's (or proxy's) host is looked up by `resolve` ("HOST:PORT" -> addresses;
// default config::resolveAddresses) in a thread of its own, so a hung lookup counts against
// `timeoutMs` and is left behind at once on a stop.
using OcspResolve =
    std::function<std::vector<config::Address>(const std::string& text, std::string* error)>;
std::optional<std::string> postOcspRequest(const config::HttpUrl& url, const std::string& request,
                                           int timeoutMs, int stopFd, std::string* error,
                                           const config::HttpUrl* proxy = nullptr,
                                           const OcspResolve& resolve = {});

// The thread that fetches responses for the watched certificates, each on its own
// schedule (nextOcspFetch), one at a time, each within kOcspFetchTimeoutMs; it checks
// each answer as the configuration's file is checked and staples it, or keeps what is
// stapled (logged, counted) when the fetch fails. Lives as long as the server.
class OcspUpdater {
public:
  static constexpr int kOcspFetchTimeoutMs = 10'000;
  OcspUpdater();
  ~OcspUpdater();
  OcspUpdater(const OcspUpdater&) = delete;
  OcspUpdater& operator=(const OcspUpdater&) = delete;

  // What the running configuration asks for; a certificate watched before keeps its
  // schedule (fetched at once when its responder changed), one no longer watched is left.
  // Starts the thread on first use; false with `error` when it cannot.
  bool watch(std::vector<OcspWatch> watches, std::string* error);
  // Stops the thread, interrupting a fetch under way.
  void stop();

private:
  struct Entry;
  void run();
  void fetch(Entry& entry);

  std::mutex mutex_;
  std::vector<std::shared_ptr<Entry>> entries_;
  int wakeFd_ = -1;  // eventfd: the watches changed
  int stopFd_ = -1;  // eventfd: stop, now
  std::thread thread_;
};

}  // namespace grelay::proxy
