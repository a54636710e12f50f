#include "proxy/tls_context.h"

#include <arpa/inet.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "proxy/log.h"
#include "proxy/ocsp.h"
#include "proxy/tls_util.h"
#include "relay/tls_channel.h"

namespace grelay::proxy {
namespace {

std::string at(const config::Location& l, const std::string& message) {
  return l.file + ":" + std::to_string(l.line) + ":" + std::to_string(l.column) + ": " + message;
}

using Kind = metrics::TlsFileDate::Kind;

constexpr int64_t kDay = 86400;

// "less than a day", "1 day", "5 days".
std::string timeLeft(int64_t seconds) {
  const int64_t days = seconds / kDay;
  return days == 0 ? "less than a day" : days == 1 ? "1 day" : std::to_string(days) + " days";
}

// Of the objects in `store` that `dated` gives a name and a date (a CA certificate's
// subject and notAfter, a CRL's issuer and nextUpdate), the newest date of each name:
// OpenSSL takes a current one of several, so an old one beside it is harmless.
using NamedDates = std::vector<std::pair<const X509_NAME*, int64_t>>;
NamedDates newestByName(
    X509_STORE* store,
    const std::function<std::optional<std::pair<const X509_NAME*, int64_t>>(X509_OBJECT*)>& dated) {
  NamedDates newest;
  STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(store);
  for (int i = 0; i < sk_X509_OBJECT_num(objects); ++i) {
    const auto date = dated(sk_X509_OBJECT_value(objects, i));
    if (!date) {
      continue;
    }
    auto it = std::find_if(newest.begin(), newest.end(),
                           [&](const auto& n) { return X509_NAME_cmp(n.first, date->first) == 0; });
    if (it == newest.end()) {
      newest.push_back(*date);
    } else {
      it->second = std::max(it->second, date->second);
    }
  }
  return newest;
}

std::string printableName(const X509_NAME* name) {
  std::string text = relay::rfc2253(name);
  return text.empty() ? "?" : text;
}

// Records when the certificate `ctx` serves (or presents, upstream) expires, and warns of
// one that has expired or is not valid yet: OpenSSL loads either, and then every peer that
// verifies refuses it.
void noteCertificate(SSL_CTX* ctx, Kind kind, const std::string& owner,
                     const config::CertificateFiles& files,
                     std::vector<metrics::TlsFileDate>* dates, std::vector<std::string>* warnings) {
  const X509* cert = SSL_CTX_get0_certificate(ctx);
  const std::optional<int64_t> notAfter =
      cert != nullptr ? unixTime(X509_get0_notAfter(cert)) : std::nullopt;
  if (!notAfter) {
    return;
  }
  dates->push_back({kind, owner, files.cert, *notAfter});
  if (warnings == nullptr) {
    return;
  }
  const bool listener = kind == Kind::kListenerCertificate;
  const std::string what = (listener ? "warning: listener " : "warning: upstream ") + owner +
                           ": the " + (listener ? "" : "client ") + "certificate in cert file '" +
                           files.cert + "' ";
  const std::string refused =
      listener ? "clients that verify refuse it" : "servers that ask for one refuse it";
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  if (*notAfter < now) {
    warnings->push_back(
        at(files.location, what + "expired at " + isoTime(*notAfter) + ": " + refused));
  } else if (const std::optional<int64_t> notBefore = unixTime(X509_get0_notBefore(cert));
             notBefore && *notBefore > now) {
    warnings->push_back(
        at(files.location, what + "is not valid before " + isoTime(*notBefore) + ": " + refused));
  } else if (*notAfter - now < 14 * kDay) {
    // As the GrelayTlsCertificateExpiresSoon alert, so --check in a deploy pipeline says it.
    warnings->push_back(at(files.location, what + "expires at " + isoTime(*notAfter) + " (in " +
                                               timeLeft(*notAfter - now) +
                                               "): renew it and reload"));
  }
}

// Records the earliest nextUpdate of the revocation lists in `ctx`'s store (a listener's
// client_crl, a pool's crl), and warns of a CA whose list is past it: OpenSSL then fails
// every certificate of that CA (X509_V_ERR_CRL_HAS_EXPIRED), revoked or not. Of several
// lists of one CA, OpenSSL takes a current one, so the newest of each CA counts.
void noteRevocationLists(SSL_CTX* ctx, Kind kind, const std::string& owner, const std::string& file,
                         const config::Location& where, std::vector<metrics::TlsFileDate>* dates,
                         std::vector<std::string>* warnings) {
  const NamedDates newest =
      newestByName(SSL_CTX_get_cert_store(ctx),
                   [](X509_OBJECT* o) -> std::optional<std::pair<const X509_NAME*, int64_t>> {
                     X509_CRL* crl = X509_OBJECT_get0_X509_CRL(o);
                     const std::optional<int64_t> next =
                         crl != nullptr ? unixTime(X509_CRL_get0_nextUpdate(crl)) : std::nullopt;
                     if (!next) {
                       return std::nullopt;  // not a CRL, or one without a nextUpdate: never stale
                     }
                     return std::make_pair(X509_CRL_get_issuer(crl), *next);
                   });
  if (newest.empty()) {
    return;
  }
  const bool listener = kind == Kind::kClientCrl;
  int64_t earliest = newest.front().second;
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  for (const auto& [issuer, next] : newest) {
    earliest = std::min(earliest, next);
    if (next >= now || warnings == nullptr) {
      continue;
    }
    warnings->push_back(
        at(where, std::string("warning: ") + (listener ? "listener " : "upstream ") + owner +
                      ": the revocation list of " + printableName(issuer) + " in " +
                      (listener ? "client_crl" : "crl") + " file '" + file + "' expired at " +
                      isoTime(next) + " (nextUpdate): every " + (listener ? "client" : "server") +
                      " certificate that CA signed is refused until the file is refreshed and "
                      "grelay reloaded"));
  }
  dates->push_back({kind, owner, file, earliest});
}

// Records when the CA certificates of a verify file (a listener's client_ca, a pool's ca)
// stop being good: the earliest of each subject's newest notAfter. Warns of a CA that has
// expired or is within 14 days of it: OpenSSL then fails every certificate it signed.
void noteCaFile(SSL_CTX* ctx, Kind kind, const std::string& owner, const std::string& file,
                const config::Location& where, std::vector<metrics::TlsFileDate>* dates,
                std::vector<std::string>* warnings) {
  const NamedDates newest =
      newestByName(SSL_CTX_get_cert_store(ctx),
                   [](X509_OBJECT* o) -> std::optional<std::pair<const X509_NAME*, int64_t>> {
                     X509* ca = X509_OBJECT_get0_X509(o);
                     const std::optional<int64_t> notAfter =
                         ca != nullptr ? unixTime(X509_get0_notAfter(ca)) : std::nullopt;
                     if (!notAfter) {
                       return std::nullopt;
                     }
                     return std::make_pair(X509_get_subject_name(ca), *notAfter);
                   });
  if (newest.empty()) {
    return;
  }
  const bool listener = kind == Kind::kClientCa;
  int64_t earliest = newest.front().second;
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  for (const auto& [subject, notAfter] : newest) {
    earliest = std::min(earliest, notAfter);
    if (notAfter - now >= 14 * kDay || warnings == nullptr) {
      continue;
    }
    const std::string what = std::string("warning: ") + (listener ? "listener " : "upstream ") +
                             owner + ": the CA " + printableName(subject) + " in " +
                             (listener ? "client_ca" : "ca") + " file '" + file + "' ";
    const std::string signedBy =
        listener ? "every client certificate it signed" : "every server certificate it signed";
    warnings->push_back(at(where, notAfter < now
                                      ? what + "expired at " + isoTime(notAfter) + ": " + signedBy +
                                            " fails verification until the file has a current one"
                                      : what + "expires at " + isoTime(notAfter) + " (in " +
                                            timeLeft(notAfter - now) + "): then " + signedBy +
                                            " fails verification; put its renewal in the file and "
                                            "reload"));
  }
  dates->push_back({kind, owner, file, earliest});
}

void freeOcspSlot(void*, void* slot, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::shared_ptr<OcspSlot>*>(slot);
}

int ocspSlotIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeOcspSlot);
  return index;
}

// OpenSSL's status callback, called for a client that asks for the certificate's status
// (status_request), with the context SNI chose: its response while current, else none
// (the client asks the CA itself, or goes without, as with no stapling at all).
int stapleOcspResponse(SSL* ssl, void*) {
  const auto* slot = static_cast<const std::shared_ptr<OcspSlot>*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ocspSlotIndex()));
  const std::shared_ptr<const OcspStaple> staple = slot != nullptr ? (*slot)->staple() : nullptr;
  if (staple == nullptr || !staple->currentAt(static_cast<int64_t>(std::time(nullptr)))) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  void* copy = OPENSSL_memdup(staple->der.data(), staple->der.size());
  if (copy == nullptr) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  // (OpenSSL owns the copy from here on, and frees it with the connection.)
  SSL_set_tlsext_status_ocsp_resp(ssl, static_cast<unsigned char*>(copy),
                                  static_cast<long>(staple->der.size()));
  return SSL_TLSEXT_ERR_OK;
}

// Loads `files.ocsp_response` about `subject` (nullptr: the cert file has no issuer): the
// response to staple, or nullptr (an error appended) when it cannot be read, is not a
// successful response, has no entry for the certificate, says it is revoked or unknown, or
// is not signed for its CA. One past its nextUpdate (or before its thisUpdate) loads with a
// warning and is not stapled; `updated` (ocsp_update) says grelay fetches the next one.
std::shared_ptr<const OcspStaple> loadOcspResponse(const OcspSubject* subject,
                                                   const std::string& listener,
                                                   const config::CertificateFiles& files,
                                                   bool updated, std::vector<std::string>* errors,
                                                   std::vector<std::string>* warnings) {
  const std::string what = "ocsp_response file '" + files.ocsp_response + "'";
  auto fail = [&](const std::string& why) {
    errors->push_back(at(files.location, what + ": " + why));
    return nullptr;
  };
  std::ifstream in(files.ocsp_response, std::ios::binary);
  std::string der(std::istreambuf_iterator<char>(in), (std::istreambuf_iterator<char>()));
  if (!in.good() && !in.eof()) {
    return fail("cannot read it");
  }
  if (subject == nullptr) {
    return fail("cert file '" + files.cert +
                "' has no issuer certificate after the server's, which a response is "
                "checked against: append the CA's certificate");
  }
  const OcspVerdict verdict = checkOcspResponse(std::move(der), *subject, files.cert);
  if (verdict.staple == nullptr) {
    return fail(verdict.problem);
  }
  const OcspStaple& staple = *verdict.staple;
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  const std::string warning = "warning: listener " + listener + ": " + what;
  const std::string until = updated ? "grelay fetches a new one (ocsp_update)"
                                    : "the file is refreshed and grelay reloaded";
  if (warnings != nullptr && staple.nextUpdate && *staple.nextUpdate <= now) {
    warnings->push_back(at(files.location, warning + " expired at " + isoTime(*staple.nextUpdate) +
                                               " (nextUpdate): it is not stapled until " + until));
  }
  if (warnings != nullptr && staple.thisUpdate > now + kOcspClockSkew) {
    warnings->push_back(at(files.location, warning + " is not valid before " +
                                               isoTime(staple.thisUpdate) +
                                               " (thisUpdate): it is not stapled until then"));
  }
  return verdict.staple;
}

constexpr const char* kDefaultGroups = "X25519:prime256v1:secp384r1";

// The key exchange groups a context offers or accepts (config `groups`); false (an error
// appended) when OpenSSL does not know one.
bool setGroups(SSL_CTX* ctx, const std::vector<std::string>& groups, const config::Location& where,
               std::vector<std::string>* errors) {
  if (groups.empty()) {
    return true;
  }
  std::string list;
  for (const std::string& g : groups) {
    list += (list.empty() ? "" : ":") + g;
  }
  if (SSL_CTX_set1_groups_list(ctx, list.c_str()) != 1) {
    errors->push_back(at(where, "groups '" + list + "': " + takeOpensslError() +
                                    " (OpenSSL names: X25519, X448, P-256, P-384, P-521, "
                                    "ffdhe2048, ...)"));
    return false;
  }
  return true;
}

void commonOptions(SSL_CTX* ctx, bool ktls) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  // Idle sessions keep no read/write buffers (memory per connection).
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set1_groups_list(ctx, kDefaultGroups);
  if (ktls) {
    SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
  }
}

// ALPN's wire format: each name after its length byte.
std::string alpnWire(const std::vector<std::string>& protocols) {
  std::string out;
  for (const std::string& p : protocols) {
    out.push_back(static_cast<char>(p.size()));
    out += p;
  }
  return out;
}

void freeAlpnWire(void*, void* wire, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::string*>(wire);
}

int alpnWireIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeAlpnWire);
  return index;
}

// Session ticket keys of one listener context (session_tickets). Made by grelay: a fresh
// key every `rotation`, made at the first handshake past the period; tickets are sealed
// with the newest and opened with it or the one before, so a key lives at most two periods
// (what a stolen key can decrypt is bounded, as with nginx's or HAProxy's rotated key
// files). Or from files (session_ticket_keys): the first seals, each opens, none rotates.
// Handshakes of every worker share it: a mutex, taken once per ticket.
class TicketKeys {
public:
  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char mac[32];
    bool aes128 = false;  // a 48-byte key file: AES-128 and a 16-byte HMAC key
  };

  explicit TicketKeys(config::Duration rotation)
      : rotationNanos_(static_cast<uint64_t>(rotation.count()) * 1'000'000) {}

  // Fixed keys, `keys.front()` sealing.
  explicit TicketKeys(const std::vector<Key>& keys)
      : rotationNanos_(0), keys_(keys.rbegin(), keys.rend()) {}

  // OpenSSL's ticket callback (SSL_CTX_set_tlsext_ticket_key_evp_cb): 1 = sealed, or
  // opened with the newest key; 2 = opened with an older one (OpenSSL renews the
  // ticket); 0 = unknown key (a full handshake); -1 = error.
  int crypt(unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac,
            int seal) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (rotationNanos_ != 0) {
      rotate(monotonicNanos());
    }
    const Key* key = nullptr;
    bool newest = true;
    if (seal == 1) {
      key = &keys_.back();
      std::memcpy(name, key->name, sizeof(key->name));
      if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1) {
        return -1;
      }
    } else {
      for (auto it = keys_.rbegin(); it != keys_.rend(); ++it) {
        if (std::memcmp(name, it->name, sizeof(it->name)) == 0) {
          key = &*it;
          break;
        }
        newest = false;
      }
      if (key == nullptr) {
        return 0;
      }
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key->mac),
                                          key->aes128 ? 16 : sizeof(key->mac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
        OSSL_PARAM_construct_end()};
    const EVP_CIPHER* aes = key->aes128 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
    const int ok = seal == 1 ? EVP_EncryptInit_ex(cipher, aes, nullptr, key->aes, iv)
                             : EVP_DecryptInit_ex(cipher, aes, nullptr, key->aes, iv);
    if (ok != 1 || EVP_MAC_CTX_set_params(mac, params) != 1) {
      return -1;
    }
    return newest ? 1 : 2;
  }

private:
  // Past the period: a new key, keeping the one before only if it was made in the last
  // period (after a quiet spell both are too old).
  void rotate(uint64_t now) {
    if (!keys_.empty() && now < madeAt_ + rotationNanos_) {
      return;
    }
    const bool keepLast = !keys_.empty() && now < madeAt_ + 2 * rotationNanos_;
    while (keys_.size() > (keepLast ? 1u : 0u)) {
      keys_.pop_front();
    }
    Key& key = keys_.emplace_back();
    RAND_bytes(key.name, sizeof(key.name));
    RAND_bytes(key.aes, sizeof(key.aes));
    RAND_bytes(key.mac, sizeof(key.mac));
    madeAt_ = now;
  }

  const uint64_t rotationNanos_;  // 0: fixed keys
  std::mutex mutex_;
  std::deque<Key> keys_;  // oldest first: back() seals
  uint64_t madeAt_ = 0;
};

// Reads session_ticket_keys in nginx's format: 16 bytes of key name, then the HMAC key
// and the AES key, 32 bytes each (80 in all; 16 each in a 48-byte file). false (errors
// appended) when a file cannot be read, has another size, or names a key another has.
bool readTicketKeys(const config::ListenerTlsConfig& t, std::vector<TicketKeys::Key>* out,
                    std::vector<std::string>* errors) {
  for (const std::string& path : t.session_ticket_keys) {
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad() || !in.is_open()) {
      errors->push_back(at(t.location, "cannot read session ticket key file '" + path + "'"));
      return false;
    }
    if (bytes.size() != 80 && bytes.size() != 48) {
      errors->push_back(at(t.location, "session ticket key file '" + path + "' has " +
                                           std::to_string(bytes.size()) + " bytes, not 80 or 48"));
      return false;
    }
    TicketKeys::Key& key = out->emplace_back();
    const size_t half = bytes.size() == 80 ? 32 : 16;
    key.aes128 = half == 16;
    std::memcpy(key.name, bytes.data(), 16);
    std::memcpy(key.mac, bytes.data() + 16, half);
    std::memcpy(key.aes, bytes.data() + 16 + half, half);
    OPENSSL_cleanse(bytes.data(), bytes.size());
    for (size_t i = 0; i + 1 < out->size(); ++i) {
      if (std::memcmp((*out)[i].name, key.name, sizeof(key.name)) == 0) {
        errors->push_back(at(t.location, "session ticket key files '" + t.session_ticket_keys[i] +
                                             "' and '" + path +
                                             "' start with the same key name (16 bytes): each key "
                                             "needs its own"));
        return false;
      }
    }
  }
  return true;
}

void freeTicketKeys(void*, void* keys, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<TicketKeys*>(keys);
}

int ticketKeysIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeTicketKeys);
  return index;
}

int ticketKeyCallback(SSL* ssl, unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
                      EVP_MAC_CTX* mac, int seal) {
  auto* keys =
      static_cast<TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ticketKeysIndex()));
  return keys != nullptr ? keys->crypt(name, iv, cipher, mac, seal) : 0;
}

// The sessions of one upstream pool's context (session_reuse), one per key (server
// address, SNI, name verified), the newest kept: a TLS 1.3 server sends a fresh ticket with
// every handshake, resumed or not. Bounded: forward_sni lets clients choose names, so past
// kMax the oldest key goes. Workers share it: a mutex, taken once per connect and ticket.
class ClientSessions {
public:
  static constexpr size_t kMax = 1024;

  ~ClientSessions() {
    for (auto& [key, session] : sessions_) {
      SSL_SESSION_free(session);
    }
  }

  // Takes `session`'s reference.
  void put(const std::string& key, SSL_SESSION* session) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, added] = sessions_.try_emplace(key, session);
    if (!added) {
      SSL_SESSION_free(it->second);
      it->second = session;
      return;
    }
    order_.push_back(key);
    while (sessions_.size() > kMax) {
      if (auto old = sessions_.find(order_.front()); old != sessions_.end()) {
        SSL_SESSION_free(old->second);
        sessions_.erase(old);
      }
      order_.pop_front();
    }
  }

  // A reference to the session filed under `key`, or nullptr.
  SSL_SESSION* get(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sessions_.find(key);
    if (it == sessions_.end() || SSL_SESSION_up_ref(it->second) != 1) {
      return nullptr;
    }
    return it->second;
  }

  void forget(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = sessions_.find(key); it != sessions_.end()) {
      SSL_SESSION_free(it->second);
      sessions_.erase(it);
      // Its place in the order too: filed again later, it goes to the back, and a server
      // that keeps failing handshakes does not grow the order without end.
      order_.erase(std::find(order_.begin(), order_.end(), key));
    }
  }

private:
  std::mutex mutex_;
  std::unordered_map<std::string, SSL_SESSION*> sessions_;
  std::deque<std::string> order_;  // keys as first filed, oldest first
};

void freeClientSessions(void*, void* sessions, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<ClientSessions*>(sessions);
}

int clientSessionsIndex() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeClientSessions);
  return index;
}

void freeSessionKey(void*, void* key, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::string*>(key);
}

// An upstream connection's key in its pool's ClientSessions (SSL ex_data); health checks
// have none, so their sessions are not filed.
int sessionKeyIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, freeSessionKey);
  return index;
}

// OpenSSL's new-session callback on an upstream context: 1 = the reference is ours.
int fileClientSession(SSL* ssl, SSL_SESSION* session) {
  auto* sessions = static_cast<ClientSessions*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), clientSessionsIndex()));
  const auto* key = static_cast<const std::string*>(SSL_get_ex_data(ssl, sessionKeyIndex()));
  if (sessions == nullptr || key == nullptr || SSL_SESSION_is_resumable(session) != 1) {
    return 0;
  }
  sessions->put(*key, session);
  return 1;
}

// The ALPN callback: the first of the listener's protocols the client offers, or no ALPN
// at all (the handshake goes on: a TCP proxy has no reason to refuse a client over it).
int selectAlpn(SSL*, const unsigned char** out, unsigned char* outLength, const unsigned char* in,
               unsigned int inLength, void* arg) {
  const auto* ours = static_cast<const std::string*>(arg);
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(
          &chosen, outLength, reinterpret_cast<const unsigned char*>(ours->data()),
          static_cast<unsigned int>(ours->size()), in, inLength) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

// Loads a certificate chain and its key into `ctx`; false (errors appended) if either
// does not load or they do not match.
bool loadCertificate(SSL_CTX* ctx, const config::CertificateFiles& files,
                     std::vector<std::string>* errors) {
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
    errors->push_back(at(files.location, "cannot load certificate from cert file '" + files.cert +
                                             "': " + takeOpensslError()));
  } else if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    errors->push_back(at(files.location, "cannot load private key from key file '" + files.key +
                                             "': " + takeOpensslError()));
  } else if (SSL_CTX_check_private_key(ctx) != 1) {
    errors->push_back(at(files.location, "key file '" + files.key + "' does not match cert file '" +
                                             files.cert + "': " + takeOpensslError()));
  } else {
    return true;
  }
  return false;
}

// A server context with the listener's settings and one certificate; nullptr (errors
// appended) if it cannot be made or the files do not load.
SSL_CTX* serverContext(const config::ListenerTlsConfig& t, const config::CertificateFiles& files,
                       bool ktls, std::vector<std::string>* errors) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) {
    errors->push_back(at(t.location, "cannot create a TLS context: " + takeOpensslError()));
    return nullptr;
  }
  commonOptions(ctx, ktls);
  if (t.min_version == "1.3") {
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  }
  if (t.session_tickets) {
    // One ticket per full handshake (OpenSSL's default is two), written with the last
    // handshake flight, before the session relays a byte (kTLS or not). One context per
    // listener and generation: every worker's sessions share its ticket keys.
    SSL_CTX_set_num_tickets(ctx, 1);
    std::vector<TicketKeys::Key> fromFiles;
    if (!t.session_ticket_keys.empty() && !readTicketKeys(t, &fromFiles, errors)) {
      SSL_CTX_free(ctx);
      return nullptr;
    }
    SSL_CTX_set_ex_data(
        ctx, ticketKeysIndex(),
        fromFiles.empty() ? new TicketKeys(t.session_ticket_rotation) : new TicketKeys(fromFiles));
    OPENSSL_cleanse(fromFiles.data(), fromFiles.size() * sizeof(TicketKeys::Key));
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketKeyCallback);
  } else {
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  }
  if (!t.alpn.empty()) {
    // Owned by the context (ex_data): alive as long as any handshake may read it.
    auto* wire = new std::string(alpnWire(t.alpn));
    SSL_CTX_set_ex_data(ctx, alpnWireIndex(), wire);
    SSL_CTX_set_alpn_select_cb(ctx, selectAlpn, wire);
  }
  const std::string ciphers = t.ciphers.empty() ? kIntermediateCiphers : t.ciphers;
  bool ok = true;
  if (!t.client_ca.empty()) {
    // mTLS. The session ID context lets a TLS 1.2 client resume a verified session (OpenSSL
    // refuses resumption with verification on and none set).
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(t.client_ca.c_str());
    if (names == nullptr || SSL_CTX_load_verify_locations(ctx, t.client_ca.c_str(), nullptr) != 1) {
      errors->push_back(at(t.location, "cannot load client CA certificates from client_ca file '" +
                                           t.client_ca + "': " + takeOpensslError()));
      ok = false;
    } else {
      SSL_CTX_set_client_CA_list(ctx, names);  // named in the CertificateRequest
      names = nullptr;
    }
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    if (!t.client_crl.empty()) {
      // Every CA of a chain must have its CRL (HAProxy's crl-file, nginx's ssl_crl): an
      // expired one fails verification too, so refresh the file and reload.
      X509_STORE* store = SSL_CTX_get_cert_store(ctx);
      X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
      if (lookup == nullptr ||
          X509_load_crl_file(lookup, t.client_crl.c_str(), X509_FILETYPE_PEM) <= 0) {
        errors->push_back(at(t.location, "cannot load revocation lists from client_crl file '" +
                                             t.client_crl + "': " + takeOpensslError()));
        ok = false;
      }
      X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    }
    SSL_CTX_set_verify(
        ctx, SSL_VERIFY_PEER | (t.client_cert_optional ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT),
        nullptr);
    static const unsigned char kSessionContext[] = "grelay";
    SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  }
  if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) {
    errors->push_back(at(t.location, "ciphers '" + ciphers + "': " + takeOpensslError()));
    ok = false;
  }
  if (!t.ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, t.ciphersuites.c_str()) != 1) {
    errors->push_back(
        at(t.location, "ciphersuites '" + t.ciphersuites + "': " + takeOpensslError()));
    ok = false;
  }
  ok = setGroups(ctx, t.groups, t.location, errors) && ok;
  if (loadCertificate(ctx, files, errors) && ok) {
    return ctx;
  }
  SSL_CTX_free(ctx);
  return nullptr;
}

// The DNS names of a context's certificate (subjectAltName), lower case.
std::vector<std::string> dnsNames(SSL_CTX* ctx) {
  std::vector<std::string> out;
  X509* cert = SSL_CTX_get0_certificate(ctx);
  auto* names = cert == nullptr ? nullptr
                                : static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(
                                      cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type != GEN_DNS) {
      continue;
    }
    const ASN1_IA5STRING* dns = name->d.dNSName;
    out.push_back(config::canonicalHostName(
        std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                         static_cast<size_t>(ASN1_STRING_length(dns)))));
  }
  GENERAL_NAMES_free(names);
  return out;
}

// Which context serves which name the client asks for: exact names, then wildcards
// ("*.example.com" is kept as "example.com" and covers one label in front of it).
// Owned by the default context (ex_data), so it lives exactly as long as any handshake
// that may use it; it holds a reference to each context in it.
struct SniTable {
  std::unordered_map<std::string, SSL_CTX*> exact;
  std::unordered_map<std::string, SSL_CTX*> wildcard;
  std::vector<SSL_CTX*> owned;
  bool strict = false;  // strict_sni: a name no certificate has (or none) fails the handshake
};

void freeSniTable(void*, void* table, CRYPTO_EX_DATA*, int, long, void*) {
  auto* t = static_cast<SniTable*>(table);
  if (t != nullptr) {
    for (SSL_CTX* ctx : t->owned) {
      SSL_CTX_free(ctx);
    }
    delete t;
  }
}

int sniTableIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, freeSniTable);
  return index;
}

// The servername callback: switches the handshake to the certificate for the name.
int selectCertificate(SSL* ssl, int* alert, void* arg) {
  const auto* table = static_cast<const SniTable*>(arg);
  const SSL_CTX* chosen = nullptr;
  if (const char* sent = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) {
    const std::string name = config::canonicalHostName(sent);
    if (auto it = table->exact.find(name); it != table->exact.end()) {
      chosen = it->second;
    } else if (const size_t dot = name.find('.'); dot != std::string::npos && dot > 0) {
      if (auto w = table->wildcard.find(name.substr(dot + 1)); w != table->wildcard.end()) {
        chosen = w->second;
      }
    }
  }
  if (chosen == nullptr) {
    // No SNI, or a name no certificate has: the default certificate, unless strict.
    if (table->strict) {
      *alert = SSL_AD_UNRECOGNIZED_NAME;
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
  }
  if (SSL_get_SSL_CTX(ssl) != chosen) {
    SSL_set_SSL_CTX(ssl, const_cast<SSL_CTX*>(chosen));
  }
  return SSL_TLSEXT_ERR_OK;
}

// Names -> contexts for the default certificate and `t.certs`; an extra certificate
// without DNS names, or a name in two of them, is an error.
void addSniCertificates(
    SSL_CTX* def, const config::ListenerTlsConfig& t, bool ktls, std::vector<std::string>* errors,
    const std::function<void(SSL_CTX*, const config::CertificateFiles&)>& loaded) {
  auto table = std::make_unique<SniTable>();
  table->strict = t.strict_sni;
  std::unordered_map<std::string, std::string> whose;  // name -> the cert file with it
  // (The default certificate needs DNS names only when nothing else may be served.)
  auto add = [&](SSL_CTX* ctx, const std::string& file, const config::Location& where,
                 bool needsNames) {
    const std::vector<std::string> names = dnsNames(ctx);
    if (names.empty() && needsNames) {
      errors->push_back(
          at(where,
             "cert file '" + file + "' has no DNS names (subjectAltName) for SNI to choose it by"));
    }
    for (const std::string& name : names) {
      auto [it, added] = whose.emplace(name, file);
      if (!added) {
        if (it->second != file) {
          errors->push_back(at(where, "name '" + name + "' of cert file '" + file +
                                          "' is also in cert file '" + it->second +
                                          "': SNI could choose only one"));
        }
        continue;
      }
      if (name.rfind("*.", 0) == 0) {
        table->wildcard.emplace(name.substr(2), ctx);
      } else {
        table->exact.emplace(name, ctx);
      }
    }
  };
  add(def, t.cert, t.location, t.strict_sni);
  for (const config::CertificateFiles& files : t.certs) {
    SSL_CTX* ctx = serverContext(t, files, ktls, errors);
    if (ctx == nullptr) {
      continue;
    }
    table->owned.push_back(ctx);
    add(ctx, files.cert, files.location, true);
    loaded(ctx, files);
  }
  SniTable* raw = table.release();
  SSL_CTX_set_ex_data(def, sniTableIndex(), raw);
  SSL_CTX_set_tlsext_servername_callback(def, selectCertificate);
  SSL_CTX_set_tlsext_servername_arg(def, raw);
}

// Whether `cert` requires its OCSP status in the handshake ("must-staple": a TLS Feature
// extension with status_request or status_request_v2, RFC 7633).
bool mustStaple(X509* cert) {
  auto* features = static_cast<TLS_FEATURE*>(
      cert != nullptr ? X509_get_ext_d2i(cert, NID_tlsfeature, nullptr, nullptr) : nullptr);
  bool must = false;
  for (int i = 0; i < sk_ASN1_INTEGER_num(features); ++i) {
    const long feature = ASN1_INTEGER_get(sk_ASN1_INTEGER_value(features, i));
    must = must || feature == TLSEXT_TYPE_status_request || feature == 17;  // status_request_v2
  }
  sk_ASN1_INTEGER_pop_free(features, ASN1_INTEGER_free);
  return must;
}

}  // namespace

void TlsContexts::staple(SSL_CTX* ctx, const config::ListenerConfig& l,
                         const config::CertificateFiles& files, std::vector<std::string>* errors,
                         std::vector<std::string>* warnings) {
  const config::ListenerTlsConfig& t = *l.tls;
  if (files.ocsp_response.empty() && !t.ocsp_update) {
    if (warnings != nullptr && mustStaple(SSL_CTX_get0_certificate(ctx))) {
      warnings->push_back(
          at(files.location, "warning: listener " + l.name + ": the certificate in cert file '" +
                                 files.cert +
                                 "' requires OCSP stapling (\"must-staple\", TLS Feature "
                                 "status_request) and the listener staples nothing: clients "
                                 "that honour it (Firefox) refuse it; set ocsp_update = true "
                                 "or ocsp_response"));
    }
    return;
  }
  const std::shared_ptr<const OcspSubject> subject = OcspSubject::of(ctx);
  std::shared_ptr<const OcspStaple> loaded;
  if (!files.ocsp_response.empty()) {
    loaded = loadOcspResponse(subject.get(), l.name, files, t.ocsp_update, errors, warnings);
    if (loaded == nullptr) {
      return;
    }
  }
  std::shared_ptr<OcspSlot> slot;
  if (t.ocsp_update) {
    // (A certificate with no responder, a self-signed default one say, goes without.)
    std::string url = t.ocsp_responder.empty() ? ocspResponderUrl(SSL_CTX_get0_certificate(ctx))
                                               : t.ocsp_responder;
    const std::optional<config::HttpUrl> responder = config::parseHttpUrl(url);
    if (responder && subject == nullptr) {
      errors->push_back(at(files.location, "ocsp_update: cert file '" + files.cert +
                                               "' has no issuer certificate after the server's, "
                                               "which OCSP requests name and responses are "
                                               "checked against: append the CA's certificate"));
      return;
    }
    if (!responder) {
      if (warnings != nullptr) {
        warnings->push_back(
            at(files.location,
               "warning: listener " + l.name + ": ocsp_update: the certificate in cert file '" +
                   files.cert + "' " +
                   (url.empty() ? std::string("names no OCSP responder (authorityInfoAccess)")
                                : "names OCSP responder '" + url + "', not an http:// URL") +
                   ": nothing is fetched for it (set ocsp_responder)"));
      }
    } else {
      // Shared with the contexts of the generations still running, which keep it up to date
      // until this one's watches replace theirs.
      slot = sharedOcspSlot(l.name, *subject);
      ocspWatches_.push_back({slot, subject, l.name, files.cert, std::move(url), *responder,
                              config::parseHttpUrl(t.ocsp_proxy), t.ocsp_update_min_delay,
                              t.ocsp_update_max_delay});
      metrics::TlsFileDate date{Kind::kOcspResponse, l.name,
                                files.ocsp_response.empty() ? files.cert : files.ocsp_response};
      date.ocsp = slot->stats();
      dates_.push_back(std::move(date));
    }
  }
  if (slot == nullptr) {
    slot = std::make_shared<OcspSlot>();
    if (loaded != nullptr && loaded->nextUpdate) {
      dates_.push_back({Kind::kOcspResponse, l.name, files.ocsp_response, *loaded->nextUpdate});
    }
  }
  if (loaded != nullptr) {
    slot->offer(loaded);
  }
  SSL_CTX_set_ex_data(ctx, ocspSlotIndex(), new std::shared_ptr<OcspSlot>(std::move(slot)));
  SSL_CTX_set_tlsext_status_cb(ctx, stapleOcspResponse);
}

TlsContexts::~TlsContexts() {
  clear();
}

void TlsContexts::clear() {
  for (SSL_CTX* c : listeners_) {
    SSL_CTX_free(c);
  }
  for (SSL_CTX* c : upstreams_) {
    SSL_CTX_free(c);
  }
  listeners_.clear();
  upstreams_.clear();
  dates_.clear();
  ocspWatches_.clear();
}

namespace {

// Whether a certificate with DNS names `names` (lower case) serves the route name
// `pattern`: an exact name, or a "*.domain" that covers one label in front of domain; a
// route wildcard needs the same wildcard in the certificate.
bool covered(const std::vector<std::string>& names, const std::string& pattern) {
  for (const std::string& name : names) {
    if (name == pattern) {
      return true;
    }
    const size_t dot = pattern.find('.');
    if (!pattern.starts_with("*.") && name.starts_with("*.") && dot != std::string::npos &&
        dot > 0 && pattern.compare(dot + 1, std::string::npos, name, 2) == 0) {
      return true;
    }
  }
  return false;
}

// Routes of a terminating listener for names none of its certificates has: with
// strict_sni they are never taken (the handshake fails first); without, their clients get
// the default certificate, which a client that verifies refuses.
void checkRouteNames(const config::ListenerConfig& l, SSL_CTX* def,
                     std::vector<std::string>* warnings) {
  std::vector<std::string> names = dnsNames(def);
  if (const auto* table = static_cast<const SniTable*>(SSL_CTX_get_ex_data(def, sniTableIndex()))) {
    for (SSL_CTX* ctx : table->owned) {
      for (std::string& name : dnsNames(ctx)) {
        names.push_back(std::move(name));
      }
    }
  }
  for (const config::RouteConfig& r : l.routes) {
    for (const std::string& pattern : r.sni) {
      if (covered(names, pattern)) {
        continue;
      }
      warnings->push_back(
          at(r.location,
             "warning: listener " + l.name + ": no certificate has the route name '" + pattern +
                 (l.tls->strict_sni ? "' and strict_sni refuses it: the route is never taken"
                                    : "': its clients get the default certificate, which a client "
                                      "that verifies refuses")));
    }
  }
}

}  // namespace

bool TlsContexts::build(const config::Config& cfg, bool ktls, std::vector<std::string>* errors,
                        std::vector<std::string>* warnings) {
  const size_t before = errors->size();
  clear();  // what an earlier build() made
  listeners_.assign(cfg.listeners.size(), nullptr);
  upstreams_.assign(cfg.upstreams.size(), nullptr);
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const auto& l = cfg.listeners[i];
    if (!l.tls) {
      continue;
    }
    const config::ListenerTlsConfig& t = *l.tls;
    listeners_[i] = serverContext(t, {t.cert, t.key, t.location, t.ocsp_response}, ktls, errors);
    if (listeners_[i] == nullptr) {
      continue;
    }
    auto loaded = [&](SSL_CTX* ctx, const config::CertificateFiles& files) {
      noteCertificate(ctx, Kind::kListenerCertificate, l.name, files, &dates_, warnings);
      staple(ctx, l, files, errors, warnings);
    };
    loaded(listeners_[i], {t.cert, t.key, t.location, t.ocsp_response});
    if (!t.client_ca.empty()) {
      noteCaFile(listeners_[i], Kind::kClientCa, l.name, t.client_ca, t.location, &dates_,
                 warnings);
    }
    if (!t.client_ca.empty() && !t.client_crl.empty()) {
      noteRevocationLists(listeners_[i], Kind::kClientCrl, l.name, t.client_crl, t.location,
                          &dates_, warnings);
    }
    if (!t.certs.empty() || t.strict_sni) {
      addSniCertificates(listeners_[i], t, ktls, errors, loaded);
    }
    if (warnings != nullptr && !l.routes.empty()) {
      checkRouteNames(l, listeners_[i], warnings);
    }
  }
  for (size_t i = 0; i < cfg.upstreams.size(); ++i) {
    const auto& u = cfg.upstreams[i];
    if (!u.tls.enabled) {
      continue;
    }
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
      errors->push_back(at(u.location, "cannot create a TLS context: " + takeOpensslError()));
      continue;
    }
    upstreams_[i] = ctx;
    // Kernel TLS toward upstreams too. What servers send after the handshake (TLS 1.3
    // session tickets) reaches OpenSSL as long as OpenSSL decrypts TLS 1.3 itself (3.0
    // offloads only its sending); on a kernel-TLS receive, a ticket or HelloRequest is
    // read and ignored (Session::ktlsRecordReceived).
    commonOptions(ctx, ktls);
    SSL_CTX_set_cipher_list(ctx, kIntermediateCiphers);
    setGroups(ctx, u.tls.groups, u.tls.location.line != 0 ? u.tls.location : u.location, errors);
    if (!u.tls.cert.empty() && !u.tls.key.empty()) {
      // Presented to servers that ask for a certificate (sessions and health checks alike).
      const config::CertificateFiles files{u.tls.cert, u.tls.key, u.tls.location, {}};
      if (loadCertificate(ctx, files, errors)) {
        noteCertificate(ctx, Kind::kUpstreamCertificate, u.name, files, &dates_, warnings);
      }
    }
    if (u.tls.session_reuse) {
      // Filed by fileClientSession(), offered by offerUpstreamSession(); OpenSSL's own
      // client cache would not know which server a session belongs to.
      SSL_CTX_set_ex_data(ctx, clientSessionsIndex(), new ClientSessions());
      SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
      SSL_CTX_sess_set_new_cb(ctx, fileClientSession);
    }
    if (!u.tls.alpn.empty()) {
      const std::string wire = alpnWire(u.tls.alpn);
      // (0 is success here.)
      if (SSL_CTX_set_alpn_protos(ctx, reinterpret_cast<const unsigned char*>(wire.data()),
                                  static_cast<unsigned int>(wire.size())) != 0) {
        errors->push_back(at(u.tls.location, "alpn: " + takeOpensslError()));
      }
    }
    if (u.tls.verify) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
      int ok = u.tls.ca.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                                : SSL_CTX_load_verify_locations(ctx, u.tls.ca.c_str(), nullptr);
      const config::Location& where = u.tls.location.line != 0 ? u.tls.location : u.location;
      if (ok == 1 && !u.tls.ca.empty()) {
        noteCaFile(ctx, Kind::kUpstreamCa, u.name, u.tls.ca, where, &dates_, warnings);
      }
      if (!u.tls.crl.empty()) {
        // As a listener's client_crl: every CA of a server's chain needs its list (nginx's
        // proxy_ssl_crl); health checks use this context too.
        X509_STORE* store = SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
        if (lookup == nullptr ||
            X509_load_crl_file(lookup, u.tls.crl.c_str(), X509_FILETYPE_PEM) <= 0) {
          errors->push_back(at(where, "cannot load revocation lists from crl file '" + u.tls.crl +
                                          "': " + takeOpensslError()));
        } else {
          X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
          noteRevocationLists(ctx, Kind::kUpstreamCrl, u.name, u.tls.crl, where, &dates_, warnings);
        }
      }
      if (ok != 1) {
        errors->push_back(at(where, "cannot load CA certificates" +
                                        (u.tls.ca.empty() ? std::string(" (system store)")
                                                          : " from ca file '" + u.tls.ca + "'") +
                                        ": " + takeOpensslError()));
      }
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
  }
  return errors->size() == before;
}

void offerUpstreamSession(SSL* ssl, std::string key) {
  auto* sessions = static_cast<ClientSessions*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), clientSessionsIndex()));
  if (sessions == nullptr) {
    return;
  }
  if (SSL_SESSION* session = sessions->get(key)) {
    // A copy for each connection: OpenSSL takes a TLS 1.3 session it resumed out of use,
    // and a server that sends no new ticket after a resumption would get every other
    // connection in full (HAProxy hands each connection a copy too).
    if (SSL_SESSION* copy = SSL_SESSION_dup(session)) {
      SSL_set_session(ssl, copy);  // (takes its own reference)
      SSL_SESSION_free(copy);
    }
    SSL_SESSION_free(session);
  }
  auto* owned = new std::string(std::move(key));
  if (SSL_set_ex_data(ssl, sessionKeyIndex(), owned) != 1) {
    delete owned;
  }
}

void forgetUpstreamSession(SSL* ssl) {
  auto* sessions = static_cast<ClientSessions*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), clientSessionsIndex()));
  const auto* key = static_cast<const std::string*>(SSL_get_ex_data(ssl, sessionKeyIndex()));
  if (sessions != nullptr && key != nullptr) {
    sessions->forget(*key);
  }
}

std::string upstreamVerifyHost(const config::UpstreamConfig& u,
                               const config::UpstreamServer& server) {
  if (!u.tls.sni.empty()) {
    return u.tls.sni;
  }
  const std::string& text = server.written();
  if (server.address.isUnix()) {
    return "";  // no host name (the loader asks for tls.sni when verify is on)
  }
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
