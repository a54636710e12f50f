// The OpenSSL contexts a configuration needs: one server context per TLS listener and
// one client context per TLS upstream pool, built once at startup (and by --check, so a
// bad certificate, key or cipher string is reported before anything runs).
#pragma once

#include <openssl/ssl.h>

#include <string>
#include <vector>

#include "config/config.h"
#include "metrics/stats.h"
#include "proxy/ocsp.h"

namespace grelay::proxy {

// Mozilla's "intermediate" TLS 1.2 ciphers (TLS 1.3 suites are OpenSSL's defaults).
inline constexpr const char* kIntermediateCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";

class TlsContexts {
public:
  TlsContexts() = default;
  ~TlsContexts();
  TlsContexts(const TlsContexts&) = delete;
  TlsContexts& operator=(const TlsContexts&) = delete;

  // Builds every context `config` needs (anew: what an earlier build() made is freed).
  // `ktls`: let OpenSSL hand records to kernel TLS.
  // On failure returns false and appends "FILE:LINE:COL: message" lines to `errors`.
  // `warnings` (if given) gets "FILE:LINE:COL: warning: message" lines for what works but
  // is likely a mistake: a route of a TLS listener for a name no certificate has, a
  // certificate out of its dates, a revocation list past its nextUpdate.
  bool build(const config::Config& config, bool ktls, std::vector<std::string>* errors,
             std::vector<std::string>* warnings = nullptr);

  // When each certificate and revocation list build() loaded stops being good.
  const std::vector<metrics::TlsFileDate>& dates() const { return dates_; }
  // The certificates of listeners with ocsp_update whose responses grelay fetches.
  const std::vector<OcspWatch>& ocspWatches() const { return ocspWatches_; }

  SSL_CTX* listener(size_t i) const { return i < listeners_.size() ? listeners_[i] : nullptr; }
  SSL_CTX* upstream(size_t i) const { return i < upstreams_.size() ? upstreams_[i] : nullptr; }

private:
  void clear();
  // Staples the ocsp_response of `files` on `ctx` (a certificate of `l`), and watches it
  // for ocsp_update.
  void staple(SSL_CTX* ctx, const config::ListenerConfig& l, const config::CertificateFiles& files,
              std::vector<std::string>* errors, std::vector<std::string>* warnings);

  std::vector<SSL_CTX*> listeners_;  // by listener index; nullptr = plaintext
  std::vector<SSL_CTX*> upstreams_;  // by upstream index; nullptr = plaintext
  std::vector<metrics::TlsFileDate> dates_;
  std::vector<OcspWatch> ocspWatches_;
};

// Upstream session resumption (session_reuse): offers `ssl`, about to connect, the session
// last made with the same server under the same key (address, SNI, name verified), and
// files the sessions it gets under that key. Nothing when its pool has session_reuse off.
void offerUpstreamSession(SSL* ssl, std::string key);
// Drops the session filed under `ssl`'s key: its handshake failed.
void forgetUpstreamSession(SSL* ssl);

// The name an upstream server's certificate must match: `sni` if set, else the host part
// of the address as written ("10.0.0.1", "api.internal"; for one of a name's addresses,
// all_addresses, the name).
std::string upstreamVerifyHost(const config::UpstreamConfig& upstream,
                               const config::UpstreamServer& server);

// The SNI a connection to `server` sends ("" = none: the configured sni, else the host as
// written when it is a name, never an IP literal) and the name or IP address its
// certificate must match ("" when verify = false): what sessions and health checks use.
struct UpstreamPeerName {
  std::string sni;
  std::string verifyHost;
};
UpstreamPeerName upstreamPeerName(const config::UpstreamConfig& upstream,
                                  const config::UpstreamServer& server);

}  // namespace grelay::proxy
