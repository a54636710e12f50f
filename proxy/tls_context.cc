#include "proxy/tls_context.h"

#include <arpa/inet.h>

#include <openssl/err.h>

namespace grelay::proxy {
namespace {

std::string lastError() {
  unsigned long e = ERR_peek_last_error();
  std::string out;
  if (e != 0) {
    const char* r = ERR_reason_error_string(e);
    out = r != nullptr ? r : "unknown OpenSSL error";
  }
  ERR_clear_error();
  return out.empty() ? "unknown OpenSSL error" : out;
}

std::string at(const config::Location& l, const std::string& message) {
  return l.file + ":" + std::to_string(l.line) + ":" + std::to_string(l.column) + ": " + message;
}

void commonOptions(SSL_CTX* ctx, bool ktls) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  // Idle sessions keep no read/write buffers (memory per connection).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set1_groups_list(ctx, "X25519:prime256v1:secp384r1");
  if (ktls) {
    SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
  }
}

}  // namespace

TlsContexts::~TlsContexts() {
  for (SSL_CTX* c : listeners_) {
    SSL_CTX_free(c);
  }
  for (SSL_CTX* c : upstreams_) {
    SSL_CTX_free(c);
  }
}

bool TlsContexts::build(const config::Config& cfg, bool ktls, std::vector<std::string>* errors) {
  const size_t before = errors->size();
  listeners_.assign(cfg.listeners.size(), nullptr);
  upstreams_.assign(cfg.upstreams.size(), nullptr);
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const auto& l = cfg.listeners[i];
    if (!l.tls) {
      continue;
    }
    const config::ListenerTlsConfig& t = *l.tls;
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
      errors->push_back(at(t.location, "cannot create a TLS context: " + lastError()));
      continue;
    }
    listeners_[i] = ctx;
    commonOptions(ctx, ktls);
    if (t.min_version == "1.3") {
      SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    }
    // No session tickets: nothing to send after the handshake, so kTLS starts clean, and
    // no ticket keys to rotate across workers.
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    const std::string ciphers = t.ciphers.empty() ? kIntermediateCiphers : t.ciphers;
    if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) {
      errors->push_back(at(t.location, "ciphers '" + ciphers + "': " + lastError()));
    }
    if (!t.ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, t.ciphersuites.c_str()) != 1) {
      errors->push_back(at(t.location, "ciphersuites '" + t.ciphersuites + "': " + lastError()));
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, t.cert.c_str()) != 1) {
      errors->push_back(at(
          t.location, "cannot load certificate from cert file '" + t.cert + "': " + lastError()));
      continue;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, t.key.c_str(), SSL_FILETYPE_PEM) != 1) {
      errors->push_back(
          at(t.location, "cannot load private key from key file '" + t.key + "': " + lastError()));
      continue;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      errors->push_back(at(t.location, "key file '" + t.key + "' does not match cert file '" +
                                           t.cert + "': " + lastError()));
    }
  }
  for (size_t i = 0; i < cfg.upstreams.size(); ++i) {
    const auto& u = cfg.upstreams[i];
    if (!u.tls.enabled) {
      continue;
    }
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
      errors->push_back(at(u.location, "cannot create a TLS context: " + lastError()));
      continue;
    }
    upstreams_[i] = ctx;
    // Kernel TLS toward upstreams too. What servers send after the handshake (TLS 1.3
    // session tickets) reaches OpenSSL as long as OpenSSL decrypts TLS 1.3 itself (3.0
    // offloads only its sending); on a kernel-TLS receive, a ticket or HelloRequest is
    // read and ignored (Session::ktlsRecordReceived).
    commonOptions(ctx, ktls);
    SSL_CTX_set_cipher_list(ctx, kIntermediateCiphers);
    if (u.tls.verify) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
      int ok = u.tls.ca.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                                : SSL_CTX_load_verify_locations(ctx, u.tls.ca.c_str(), nullptr);
      if (ok != 1) {
        const config::Location& where = u.tls.location.line != 0 ? u.tls.location : u.location;
        errors->push_back(at(where, "cannot load CA certificates" +
                                        (u.tls.ca.empty() ? std::string(" (system store)")
                                                          : " from ca file '" + u.tls.ca + "'") +
                                        ": " + lastError()));
      }
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
  }
  return errors->size() == before;
}

std::string upstreamVerifyHost(const config::UpstreamConfig& u,
                               const config::UpstreamServer& server) {
  if (!u.tls.sni.empty()) {
    return u.tls.sni;
  }
  const std::string& text = server.written();
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    return close == std::string::npos ? "" : text.substr(1, close - 1);
  }
  size_t colon = text.rfind(':');
  return colon == std::string::npos ? text : text.substr(0, colon);
}

UpstreamPeerName upstreamPeerName(const config::UpstreamConfig& u,
                                  const config::UpstreamServer& server) {
  const std::string host = upstreamVerifyHost(u, server);
  // RFC 6066: no IP literals in SNI. (A name made of hex digits, "cafe.be", is a name.)
  in6_addr ip{};
  const bool isName = !host.empty() && inet_pton(AF_INET, host.c_str(), &ip) != 1 &&
                      inet_pton(AF_INET6, host.c_str(), &ip) != 1;
  return {!u.tls.sni.empty() ? u.tls.sni : (isName ? host : ""), u.tls.verify ? host : ""};
}

}  // namespace grelay::proxy
