// TlsContexts: OCSP stapling (ocsp_response), and the dates of CA files. Certificates and responses
// are made here with OpenSSL, so every date and signature is the test's to choose; a client asking
// for the status (status_request) does its handshake with the listener's context over a BIO pair
// and reads what was stapled.
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "config/loader.h"
#include "proxy/ocsp.h"
#include "proxy/tls_context.h"

namespace grelay::proxy {
namespace {

using KeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using CertPtr = std::unique_ptr<X509, decltype(&X509_free)>;

struct Issued {
  KeyPtr key{nullptr, EVP_PKEY_free};
  CertPtr cert{nullptr, X509_free};
};

// A P-256 certificate for `cn` (DNS name `dns` unless empty), signed by `issuer` (or
// self-signed as a CA when it is null), with serial `serial`, expiring in `notAfterDays`
// (negative: expired), naming OCSP responder `ocsp` (authorityInfoAccess) unless empty.
Issued issue(const std::string& cn, const std::string& dns, const Issued* issuer, long serial,
             long notAfterDays = 30, const std::string& ocsp = "", bool mustStaple = false) {
  Issued out;
  out.key.reset(EVP_EC_gen("P-256"));
  out.cert.reset(X509_new());
  X509* c = out.cert.get();
  X509_set_version(c, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
  X509_gmtime_adj(X509_getm_notBefore(c), std::min(notAfterDays - 1, -1L) * 86400);
  X509_gmtime_adj(X509_getm_notAfter(c), notAfterDays * 86400);
  X509_set_pubkey(c, out.key.get());
  X509_NAME* name = X509_get_subject_name(c);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(c, issuer != nullptr ? X509_get_subject_name(issuer->cert.get()) : name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer != nullptr ? issuer->cert.get() : c, c, nullptr, nullptr, 0);
  auto extend = [&](int nid, const std::string& value) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str());
    X509_add_ext(c, ext, -1);
    X509_EXTENSION_free(ext);
  };
  extend(NID_basic_constraints, issuer == nullptr ? "critical,CA:TRUE" : "CA:FALSE");
  extend(NID_subject_key_identifier, "hash");
  if (!dns.empty()) {
    extend(NID_subject_alt_name, "DNS:" + dns);
  }
  if (!ocsp.empty()) {
    extend(NID_info_access, "OCSP;URI:" + ocsp);
  }
  if (mustStaple) {
    extend(NID_tlsfeature, "status_request");
  }
  X509_sign(c, issuer != nullptr ? issuer->key.get() : out.key.get(), EVP_sha256());
  return out;
}

std::string pem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

std::string pem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

struct Response {
  int status = V_OCSP_CERTSTATUS_GOOD;
  long thisUpdate = -3600;  // seconds from now
  long nextUpdate = 86400;
  const Issued* signer = nullptr;  // the CA unless set
  int responseStatus = OCSP_RESPONSE_STATUS_SUCCESSFUL;
};

// A DER OCSP response about `leaf` (issued by `ca`).
std::string ocspResponse(const Issued& leaf, const Issued& ca, const Response& r) {
  if (r.responseStatus != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
    OCSP_RESPONSE* response = OCSP_response_create(r.responseStatus, nullptr);
    unsigned char* der = nullptr;
    const int n = i2d_OCSP_RESPONSE(response, &der);
    std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
    OCSP_RESPONSE_free(response);
    return out;
  }
  OCSP_BASICRESP* basic = OCSP_BASICRESP_new();
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), leaf.cert.get(), ca.cert.get());
  const time_t now = std::time(nullptr);
  ASN1_GENERALIZEDTIME* thisUpdate = ASN1_GENERALIZEDTIME_adj(nullptr, now, 0, r.thisUpdate);
  ASN1_GENERALIZEDTIME* nextUpdate = ASN1_GENERALIZEDTIME_adj(nullptr, now, 0, r.nextUpdate);
  ASN1_GENERALIZEDTIME* revoked = r.status == V_OCSP_CERTSTATUS_REVOKED
                                      ? ASN1_GENERALIZEDTIME_adj(nullptr, now, 0, -7200)
                                      : nullptr;
  OCSP_basic_add1_status(basic, id, r.status, OCSP_REVOKED_STATUS_KEYCOMPROMISE, revoked,
                         thisUpdate, nextUpdate);
  const Issued& signer = r.signer != nullptr ? *r.signer : ca;
  OCSP_basic_sign(basic, signer.cert.get(), signer.key.get(), EVP_sha256(), nullptr, 0);
  OCSP_RESPONSE* response = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, basic);
  unsigned char* der = nullptr;
  const int n = i2d_OCSP_RESPONSE(response, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  OCSP_RESPONSE_free(response);
  OCSP_BASICRESP_free(basic);
  OCSP_CERTID_free(id);
  ASN1_GENERALIZEDTIME_free(thisUpdate);
  ASN1_GENERALIZEDTIME_free(nextUpdate);
  ASN1_GENERALIZEDTIME_free(revoked);
  return out;
}

// Connects `client` and `server` over a BIO pair and runs both handshakes to the end.
void handshake(SSL* client, SSL* server) {
  BIO* clientBio = nullptr;
  BIO* serverBio = nullptr;
  BIO_new_bio_pair(&clientBio, 0, &serverBio, 0);
  SSL_set_bio(client, clientBio, clientBio);
  SSL_set_bio(server, serverBio, serverBio);
  SSL_set_connect_state(client);
  SSL_set_accept_state(server);
  bool clientDone = false;
  bool serverDone = false;
  for (int round = 0; round < 20 && !(clientDone && serverDone); ++round) {
    clientDone = clientDone || SSL_do_handshake(client) == 1;
    serverDone = serverDone || SSL_do_handshake(server) == 1;
  }
  EXPECT_TRUE(clientDone && serverDone) << "handshake did not complete";
}

class OcspStaplingTest : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/grelay-ocsp-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    ca_ = issue("test CA", "", nullptr, 1);
    server_ = issue("localhost", "localhost", &ca_, 2);
    api_ = issue("api", "api.test", &ca_, 3);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  // A listener's tls serving `server_` (with the CA in its chain file unless `leafOnly`)
  // and stapling `response` ("" = none).
  config::Config listener(const std::string& response, bool leafOnly = false) {
    config::Config cfg;
    config::ListenerConfig& l = cfg.listeners.emplace_back();
    l.name = "web";
    config::ListenerTlsConfig& t = l.tls.emplace();
    t.cert = write("server.pem", pem(server_.cert.get()) + (leafOnly ? "" : pem(ca_.cert.get())));
    t.key = write("server.key", pem(server_.key.get()));
    t.location = {"grelay.toml", 7, 1};
    if (!response.empty()) {
      t.ocsp_response = write("server.ocsp", response);
    }
    return cfg;
  }

  // What a client asking for the status is stapled over a handshake with `ctx` ("" =
  // nothing); `sni` chooses the certificate.
  static std::string stapled(SSL_CTX* ctx, int version, const char* sni = "localhost") {
    SSL_CTX* clientCtx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(clientCtx, version);
    SSL_CTX_set_max_proto_version(clientCtx, version);
    SSL* client = SSL_new(clientCtx);
    SSL* server = SSL_new(ctx);
    SSL_set_tlsext_status_type(client, TLSEXT_STATUSTYPE_ocsp);
    SSL_set_tlsext_host_name(client, sni);
    handshake(client, server);
    const unsigned char* p = nullptr;
    const long n = SSL_get_tlsext_status_ocsp_resp(client, &p);
    std::string out = n > 0 && p != nullptr
                          ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n))
                          : "";
    SSL_free(client);
    SSL_free(server);
    SSL_CTX_free(clientCtx);
    return out;
  }

  std::string dir_;
  Issued ca_;
  Issued server_;
  Issued api_;
};

TEST_F(OcspStaplingTest, ACurrentResponseIsStapledAsItIsOverTls12AndTls13) {
  const std::string response = ocspResponse(server_, ca_, {});
  const config::Config cfg = listener(response);
  TlsContexts contexts;
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
  ASSERT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
  EXPECT_TRUE(warnings.empty()) << warnings.front();
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_2_VERSION), response);
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION), response);
  bool dated = false;
  for (const metrics::TlsFileDate& d : contexts.dates()) {
    if (d.kind == metrics::TlsFileDate::Kind::kOcspResponse) {
      dated = true;
      EXPECT_EQ(d.owner, "web");
      EXPECT_EQ(d.file, cfg.listeners[0].tls->ocsp_response);
      EXPECT_NEAR(static_cast<double>(d.unixSeconds),
                  static_cast<double>(std::time(nullptr)) + 86400, 5);
    }
  }
  EXPECT_TRUE(dated);
  // Without ocsp_response nothing is stapled.
  TlsContexts plain;
  ASSERT_TRUE(plain.build(listener(""), false, &errors));
  EXPECT_EQ(stapled(plain.listener(0), TLS1_3_VERSION), "");
}

TEST_F(OcspStaplingTest, EachSniCertificateStaplesItsOwnResponse) {
  const std::string serverResponse = ocspResponse(server_, ca_, {});
  const std::string apiResponse = ocspResponse(api_, ca_, {});
  config::Config cfg = listener(serverResponse);
  config::ListenerTlsConfig& t = *cfg.listeners[0].tls;
  t.certs.push_back({write("api.pem", pem(api_.cert.get()) + pem(ca_.cert.get())),
                     write("api.key", pem(api_.key.get())), t.location,
                     write("api.ocsp", apiResponse)});
  TlsContexts contexts;
  std::vector<std::string> errors;
  ASSERT_TRUE(contexts.build(cfg, false, &errors)) << errors.front();
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION, "api.test"), apiResponse);
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_2_VERSION, "api.test"), apiResponse);
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION, "localhost"), serverResponse);
}

TEST_F(OcspStaplingTest, AResponseOutsideItsDatesIsWarnedOfAndNotStapled) {
  const struct {
    Response dates;
    const char* warning;
  } cases[] = {
      {{.thisUpdate = -2 * 86400, .nextUpdate = -60}, "' expired at "},
      {{.thisUpdate = 86400, .nextUpdate = 2 * 86400}, "' is not valid before "},
  };
  for (const auto& c : cases) {
    TlsContexts contexts;
    std::vector<std::string> errors;
    std::vector<std::string> warnings;
    const config::Config cfg = listener(ocspResponse(server_, ca_, c.dates));
    ASSERT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
    ASSERT_EQ(warnings.size(), 1u) << c.warning;
    EXPECT_EQ(warnings[0].rfind("grelay.toml:7:1: warning: listener web: ocsp_response file '" +
                                    cfg.listeners[0].tls->ocsp_response + c.warning,
                                0),
              0u)
        << warnings[0];
    EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION), "") << c.warning;
    EXPECT_EQ(stapled(contexts.listener(0), TLS1_2_VERSION), "") << c.warning;
  }
}

TEST_F(OcspStaplingTest, ABadResponseIsAConfigurationError) {
  const Issued stranger = issue("stranger", "", nullptr, 9);
  const struct {
    std::string response;
    bool leafOnly;
    std::string error;
  } cases[] = {
      {"not DER", false, "not an OCSP response in DER"},
      {ocspResponse(server_, ca_, {.responseStatus = OCSP_RESPONSE_STATUS_UNAUTHORIZED}), false,
       "the responder did not answer: unauthorized"},
      {ocspResponse(api_, ca_, {}), false, "it is not about the certificate in cert file"},
      {ocspResponse(server_, ca_, {.status = V_OCSP_CERTSTATUS_REVOKED}), false, "was revoked at "},
      {ocspResponse(server_, ca_, {.status = V_OCSP_CERTSTATUS_UNKNOWN}), false,
       "its responder does not know the certificate"},
      {ocspResponse(server_, ca_, {.signer = &stranger}), false,
       "its signature does not verify against the issuer"},
      {ocspResponse(server_, ca_, {}), true, "has no issuer certificate after the server's"},
  };
  for (const auto& c : cases) {
    TlsContexts contexts;
    std::vector<std::string> errors;
    const config::Config cfg = listener(c.response, c.leafOnly);
    EXPECT_FALSE(contexts.build(cfg, false, &errors)) << c.error;
    ASSERT_EQ(errors.size(), 1u) << c.error;
    EXPECT_EQ(errors[0].rfind("grelay.toml:7:1: ocsp_response file '" +
                                  cfg.listeners[0].tls->ocsp_response + "': ",
                              0),
              0u)
        << errors[0];
    EXPECT_NE(errors[0].find(c.error), std::string::npos) << errors[0];
  }
}

// Upstream session reuse: a connection resumes the session filed under its key (server,
// SNI, name verified) by an earlier one, never another key's; a forgotten key (its
// handshake failed) starts afresh and is filed again.
TEST_F(OcspStaplingTest, UpstreamSessionsAreFiledByKeyAndForgotten) {
  config::Config cfg = listener("");
  config::UpstreamConfig& u = cfg.upstreams.emplace_back();
  u.name = "secure";
  u.tls.enabled = true;
  u.tls.verify = false;
  TlsContexts contexts;
  std::vector<std::string> errors;
  ASSERT_TRUE(contexts.build(cfg, false, &errors)) << errors.front();
  for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    // Connects with `key` (nothing when empty): whether the handshake resumed.
    auto connect = [&](const std::string& key) {
      SSL* client = SSL_new(contexts.upstream(0));
      SSL* server = SSL_new(contexts.listener(0));
      SSL_set_max_proto_version(client, version);
      if (!key.empty()) {
        offerUpstreamSession(client, key);
      }
      handshake(client, server);
      // A byte from the server: the client reads the TLS 1.3 ticket that came before it.
      char byte = 'x';
      EXPECT_EQ(SSL_write(server, &byte, 1), 1);
      EXPECT_EQ(SSL_read(client, &byte, 1), 1);
      const bool resumed = SSL_session_reused(client) == 1;
      // A clean close: OpenSSL never resumes the session of a connection freed without one.
      SSL_shutdown(client);
      SSL_free(client);
      SSL_free(server);
      return resumed;
    };
    const std::string v = version == TLS1_3_VERSION ? "1.3 " : "1.2 ";
    EXPECT_FALSE(connect(v + "a")) << v;
    EXPECT_TRUE(connect(v + "a")) << v;
    EXPECT_TRUE(connect(v + "a")) << v;
    EXPECT_FALSE(connect(v + "b")) << v;  // another server or name: its own session
    EXPECT_FALSE(connect(""));            // (a health check: nothing offered, nothing filed)
    SSL* failed = SSL_new(contexts.upstream(0));
    offerUpstreamSession(failed, v + "a");
    forgetUpstreamSession(failed);
    SSL_free(failed);
    EXPECT_FALSE(connect(v + "a")) << v;
    EXPECT_TRUE(connect(v + "a")) << v;
    EXPECT_TRUE(connect(v + "b")) << v;
  }
}

// The CAs of a verify file: the gauge has the earliest of each subject's newest notAfter
// (a renewed CA beside its expired predecessor is fine), and loading warns of a CA expired
// or within 14 days of it.
class CaFileDatesTest : public OcspStaplingTest {
protected:
  std::optional<metrics::TlsFileDate> dateOf(const TlsContexts& contexts,
                                             metrics::TlsFileDate::Kind kind) {
    for (const metrics::TlsFileDate& d : contexts.dates()) {
      if (d.kind == kind) {
        return d;
      }
    }
    return std::nullopt;
  }
};

TEST_F(CaFileDatesTest, ClientCaAndUpstreamCaExpiryAreDatedAndWarnedOf) {
  const Issued renewed = issue("test CA", "", nullptr, 11, 400);
  const Issued old = issue("test CA", "", nullptr, 12, -1);
  const Issued soon = issue("soon CA", "", nullptr, 13, 10);
  const Issued gone = issue("gone CA", "", nullptr, 14, -2);
  config::Config cfg = listener("");
  cfg.listeners[0].tls->client_ca =
      write("clients.pem", pem(old.cert.get()) + pem(renewed.cert.get()) + pem(soon.cert.get()));
  config::UpstreamConfig& u = cfg.upstreams.emplace_back();
  u.name = "secure";
  u.tls.enabled = true;
  u.tls.verify = true;
  u.tls.ca = write("servers.pem", pem(gone.cert.get()));
  u.tls.location = {"grelay.toml", 3, 7};
  TlsContexts contexts;
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
  ASSERT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  const auto client = dateOf(contexts, metrics::TlsFileDate::Kind::kClientCa);
  ASSERT_TRUE(client.has_value());
  EXPECT_EQ(client->owner, "web");
  EXPECT_EQ(client->file, cfg.listeners[0].tls->client_ca);
  EXPECT_NEAR(static_cast<double>(client->unixSeconds), static_cast<double>(now + 10 * 86400), 5);
  const auto upstream = dateOf(contexts, metrics::TlsFileDate::Kind::kUpstreamCa);
  ASSERT_TRUE(upstream.has_value());
  EXPECT_EQ(upstream->owner, "secure");
  EXPECT_NEAR(static_cast<double>(upstream->unixSeconds), static_cast<double>(now - 2 * 86400), 5);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0].rfind("grelay.toml:7:1: warning: listener web: the CA CN=soon CA in "
                              "client_ca file '" +
                                  cfg.listeners[0].tls->client_ca + "' expires at ",
                              0),
            0u)
      << warnings[0];
  // (10 days, or 9 and a bit once the second has turned.)
  EXPECT_TRUE(warnings[0].find(" (in 10 days)") != std::string::npos ||
              warnings[0].find(" (in 9 days)") != std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find(" days): then every client certificate it signed fails "
                             "verification; put its renewal in the file and reload"),
            std::string::npos)
      << warnings[0];
  EXPECT_EQ(warnings[1].rfind("grelay.toml:3:7: warning: upstream secure: the CA CN=gone CA in ca "
                              "file '" +
                                  u.tls.ca + "' expired at ",
                              0),
            0u)
      << warnings[1];
  EXPECT_NE(warnings[1].find(": every server certificate it signed fails verification until the "
                             "file has a current one"),
            std::string::npos)
      << warnings[1];
}

// An HTTP server on 127.0.0.1 that reads each request whole (headers and Content-Length
// body) and answers it with what `reply` returns, then closes; nullopt: answers nothing and
// holds the connection until the client closes it.
class ScriptedResponder {
public:
  using Reply = std::function<std::optional<std::string>(const std::string& request)>;
  explicit ScriptedResponder(Reply reply) : reply_(std::move(reply)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(fd_, 16);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedResponder() {
    shutdown(fd_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }
  std::string url(const std::string& path = "/") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::vector<std::string> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

private:
  void serve() {
    for (;;) {
      const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        return;
      }
      std::string request;
      char buffer[4096];
      size_t want = std::string::npos;
      while (want == std::string::npos || request.size() < want) {
        const ssize_t n = recv(c, buffer, sizeof(buffer), 0);
        if (n <= 0) {
          break;
        }
        request.append(buffer, static_cast<size_t>(n));
        const size_t end = request.find("\r\n\r\n");
        const size_t length = request.find("Content-Length: ");
        if (end != std::string::npos && length != std::string::npos) {
          want = end + 4 + std::stoul(request.substr(length + 16));
        }
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back(request);
      }
      const std::optional<std::string> reply = reply_(request);
      if (reply) {
        send(c, reply->data(), reply->size(), MSG_NOSIGNAL);
      } else {
        while (recv(c, buffer, sizeof(buffer), 0) > 0) {
        }
      }
      close(c);
    }
  }

  Reply reply_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::vector<std::string> requests_;
};

std::string httpOk(const std::string& body) {
  return "HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(OcspFetchTest, TheNextFetchIsHalfwayThroughTheResponseWithinTheDelays) {
  using std::chrono::milliseconds;
  const int64_t now = 1'000'000'000'000;  // Unix ms
  const milliseconds min(300'000);
  const milliseconds max(3'600'000);
  OcspStaple week{"", now / 1000 - 3600, now / 1000 + 7 * 86400};
  EXPECT_EQ(nextOcspFetch(&week, now, min, max), now + max.count());  // halfway is days away
  OcspStaple hour{"", now / 1000 - 1200, now / 1000 + 2400};
  EXPECT_EQ(nextOcspFetch(&hour, now, min, max), now + 600'000);  // halfway: 10 min from now
  OcspStaple late{"", now / 1000 - 3000, now / 1000 + 600};
  EXPECT_EQ(nextOcspFetch(&late, now, min, max), now + min.count());  // halfway has passed
  OcspStaple open{"", now / 1000, std::nullopt};
  EXPECT_EQ(nextOcspFetch(&open, now, min, max), now + max.count());
  EXPECT_EQ(nextOcspFetch(nullptr, now, min, max), now + min.count());  // after a failure
}

TEST(OcspFetchTest, ARequestIsPostedAndTheBodyOfA200Returned) {
  const std::string body(3000, '\x30');
  ScriptedResponder responder([&](const std::string&) { return httpOk(body); });
  const std::string request("\x30\x03\x02\x01\x00", 5);
  std::string error;
  const auto got =
      postOcspRequest(*config::parseHttpUrl(responder.url("/ocsp?x=1")), request, 5000, -1, &error);
  ASSERT_TRUE(got.has_value()) << error;
  EXPECT_EQ(*got, body);
  ASSERT_EQ(responder.requests().size(), 1u);
  EXPECT_EQ(responder.requests()[0],
            "POST /ocsp?x=1 HTTP/1.0\r\nHost: 127.0.0.1:" + std::to_string(responder.port()) +
                "\r\nContent-Type: application/ocsp-request\r\nContent-Length: 5\r\n"
                "Accept: application/ocsp-response\r\nConnection: close\r\n\r\n" +
                request);
}

TEST(OcspFetchTest, ThroughAProxyTheRequestNamesTheWholeUrl) {
  const std::string body = "response";
  ScriptedResponder proxy([&](const std::string&) { return httpOk(body); });
  std::string error;
  const std::optional<config::HttpUrl> via = config::parseHttpUrl(proxy.url());
  const auto got = postOcspRequest(*config::parseHttpUrl("http://ocsp.ca.test/r3"), "req", 5000, -1,
                                   &error, &*via);
  ASSERT_TRUE(got.has_value()) << error;
  EXPECT_EQ(*got, body);
  ASSERT_EQ(proxy.requests().size(), 1u);
  EXPECT_EQ(proxy.requests()[0].rfind("POST http://ocsp.ca.test/r3 HTTP/1.0\r\nHost: "
                                      "ocsp.ca.test\r\n",
                                      0),
            0u)
      << proxy.requests()[0];
  // A proxy that is not there is named.
  uint16_t closed = 0;
  {
    closed = ScriptedResponder([](const std::string&) { return ""; }).port();
  }
  const std::optional<config::HttpUrl> gone =
      config::parseHttpUrl("http://127.0.0.1:" + std::to_string(closed));
  EXPECT_FALSE(
      postOcspRequest(*config::parseHttpUrl("http://ocsp.ca.test/"), "req", 300, -1, &error, &*gone)
          .has_value());
  EXPECT_EQ(error, "proxy 127.0.0.1:" + std::to_string(closed) + ": connect: Connection refused");
}

TEST(OcspFetchTest, EveryWayAFetchFailsIsNamed) {
  const struct {
    std::optional<std::string> reply;
    const char* error;
  } cases[] = {
      {"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
       "the responder answered 404 Not Found"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
       "the responder closed after 3 of 10 bytes"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
       "the responder sent a chunked body to an HTTP/1.0 request"},
      {"", "the responder closed without answering"},
      {"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"},
      {std::nullopt, "no answer within 0s"},
  };
  for (const auto& c : cases) {
    ScriptedResponder responder([&](const std::string&) { return c.reply; });
    std::string error;
    EXPECT_FALSE(
        postOcspRequest(*config::parseHttpUrl(responder.url()), "x", 300, -1, &error).has_value())
        << c.error;
    EXPECT_EQ(error, c.error);
  }
  // Nothing listening.
  uint16_t closed = 0;
  {
    closed = ScriptedResponder([](const std::string&) { return ""; }).port();
  }
  std::string error;
  EXPECT_FALSE(postOcspRequest(*config::parseHttpUrl("http://127.0.0.1:" + std::to_string(closed)),
                               "x", 300, -1, &error)
                   .has_value());
  EXPECT_EQ(error, "connect: Connection refused");
  // A stop interrupts a fetch at once.
  ScriptedResponder silent([](const std::string&) { return std::nullopt; });
  const int stop = eventfd(1, EFD_CLOEXEC);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(
      postOcspRequest(*config::parseHttpUrl(silent.url()), "x", 10'000, stop, &error).has_value());
  EXPECT_EQ(error, "stopped");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  close(stop);
}

TEST(OcspFetchTest, AHungLookupHoldsNeitherAStopNorTheDeadline) {
  // A resolver that answers only when the test lets it (a DNS server gone).
  struct Gate {
    std::mutex mutex;
    std::condition_variable cv;
    bool open = false;
    int lookups = 0;
    int returned = 0;
  };
  auto gate = std::make_shared<Gate>();
  const OcspResolve hung = [gate](const std::string& text, std::string*) {
    std::unique_lock lock(gate->mutex);
    ++gate->lookups;
    gate->cv.wait(lock, [&] { return gate->open; });
    ++gate->returned;
    gate->cv.notify_all();
    return std::vector<config::Address>{*config::parseAddress(text)};
  };
  const config::HttpUrl url = *config::parseHttpUrl("http://127.0.0.1:9/");
  std::string error;
  const int stop = eventfd(1, EFD_CLOEXEC);
  EXPECT_FALSE(postOcspRequest(url, "x", 60'000, stop, &error, nullptr, hung).has_value());
  EXPECT_EQ(error, "stopped");
  close(stop);
  EXPECT_FALSE(postOcspRequest(url, "x", 200, -1, &error, nullptr, hung).has_value());
  EXPECT_EQ(error, "cannot resolve 127.0.0.1: no answer within 0s");
  {
    // Both lookups were left behind, still blocked; let them finish (they free their state).
    std::unique_lock lock(gate->mutex);
    EXPECT_EQ(gate->lookups, 2);
    EXPECT_EQ(gate->returned, 0);
    gate->open = true;
    gate->cv.notify_all();
    gate->cv.wait(lock, [&] { return gate->returned == 2; });
  }
  // A lookup that fails says why.
  const OcspResolve fails = [](const std::string&, std::string* why) {
    *why = "cannot resolve host 'ocsp.ca.test': Name or service not known";
    return std::vector<config::Address>{};
  };
  EXPECT_FALSE(postOcspRequest(*config::parseHttpUrl("http://ocsp.ca.test/"), "x", 5000, -1, &error,
                               nullptr, fails)
                   .has_value());
  EXPECT_EQ(error, "cannot resolve host 'ocsp.ca.test': Name or service not known");
}

// ocsp_update: the updater fetches each certificate's response from its responder, checks it
// and staples it; a failed fetch keeps what is stapled, a revoked answer staples nothing, and
// a reload's contexts share what was fetched.
class OcspUpdateTest : public OcspStaplingTest {
protected:
  // Waits up to 10 s for `done`.
  static bool eventually(const std::function<bool()>& done) {
    for (int i = 0; i < 1000; ++i) {
      if (done()) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done();
  }
};

TEST_F(OcspUpdateTest, ResponsesAreFetchedCheckedAndStapled) {
  std::mutex mutex;
  const std::string first = ocspResponse(server_, ca_, {.thisUpdate = -3600});
  std::string reply = httpOk(first);
  ScriptedResponder responder([&](const std::string&) {
    std::lock_guard<std::mutex> lock(mutex);
    return std::optional<std::string>(reply);
  });
  auto answer = [&](const std::string& next) {
    std::lock_guard<std::mutex> lock(mutex);
    reply = next;
  };
  config::Config cfg = listener("");
  config::ListenerTlsConfig& t = *cfg.listeners[0].tls;
  t.ocsp_update = true;
  t.ocsp_responder = responder.url("/ocsp");
  t.ocsp_update_min_delay = std::chrono::milliseconds(1000);
  t.ocsp_update_max_delay = std::chrono::milliseconds(1000);
  TlsContexts contexts;
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
  ASSERT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
  EXPECT_TRUE(warnings.empty()) << warnings.front();
  ASSERT_EQ(contexts.ocspWatches().size(), 1u);
  const std::shared_ptr<metrics::OcspUpdateStats> stats = contexts.ocspWatches()[0].slot->stats();
  const metrics::TlsFileDate* date = nullptr;
  for (const metrics::TlsFileDate& d : contexts.dates()) {
    date = d.kind == metrics::TlsFileDate::Kind::kOcspResponse ? &d : date;
  }
  ASSERT_NE(date, nullptr);
  EXPECT_EQ(date->file, t.cert);  // no ocsp_response file: named by the certificate
  EXPECT_EQ(date->ocsp, stats);
  EXPECT_EQ(stats->nextUpdate.load(), 0);  // nothing stapled yet
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION), "");

  OcspUpdater updater;
  std::string error;
  ASSERT_TRUE(updater.watch(contexts.ocspWatches(), &error)) << error;
  ASSERT_TRUE(eventually([&] { return stapled(contexts.listener(0), TLS1_3_VERSION) == first; }));
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_2_VERSION), first);
  EXPECT_EQ(stats->ok.value(), 1u);
  EXPECT_NEAR(static_cast<double>(stats->nextUpdate.load()),
              static_cast<double>(std::time(nullptr)) + 86400, 5);
  // The request names the certificate.
  const std::vector<std::string> requests = responder.requests();
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests[0].rfind("POST /ocsp HTTP/1.0\r\n", 0), 0u);
  const std::string body = requests[0].substr(requests[0].find("\r\n\r\n") + 4);
  const auto* p = reinterpret_cast<const unsigned char*>(body.data());
  OCSP_REQUEST* request = d2i_OCSP_REQUEST(nullptr, &p, static_cast<long>(body.size()));
  ASSERT_NE(request, nullptr);
  ASSERT_EQ(OCSP_request_onereq_count(request), 1);
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), server_.cert.get(), ca_.cert.get());
  EXPECT_EQ(OCSP_id_cmp(OCSP_onereq_get0_id(OCSP_request_onereq_get0(request, 0)), id), 0);
  OCSP_CERTID_free(id);
  OCSP_REQUEST_free(request);

  // A failed fetch keeps the response stapled.
  answer("HTTP/1.0 503 Service Unavailable\r\n\r\n");
  ASSERT_TRUE(eventually([&] { return stats->failed.value() >= 1; }));
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION), first);
  // So does an answer about another certificate.
  answer(httpOk(ocspResponse(api_, ca_, {})));
  ASSERT_TRUE(eventually([&] { return stats->failed.value() >= 2; }));
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION), first);
  // A newer response replaces it; a reload's contexts staple it at once.
  const std::string second = ocspResponse(server_, ca_, {.thisUpdate = -60, .nextUpdate = 3600});
  answer(httpOk(second));
  ASSERT_TRUE(eventually([&] { return stapled(contexts.listener(0), TLS1_3_VERSION) == second; }));
  TlsContexts reloaded;
  ASSERT_TRUE(reloaded.build(cfg, false, &errors)) << errors.front();
  EXPECT_EQ(stapled(reloaded.listener(0), TLS1_3_VERSION), second);
  ASSERT_TRUE(updater.watch(reloaded.ocspWatches(), &error)) << error;
  // Revoked: nothing is stapled any more.
  answer(httpOk(ocspResponse(server_, ca_, {.status = V_OCSP_CERTSTATUS_REVOKED})));
  ASSERT_TRUE(eventually([&] { return stapled(reloaded.listener(0), TLS1_3_VERSION).empty(); }));
  EXPECT_EQ(stapled(contexts.listener(0), TLS1_3_VERSION), "");
  EXPECT_EQ(stats->nextUpdate.load(), 0);
  updater.stop();
}

TEST_F(OcspUpdateTest, AMustStapleCertificateThatIsNotStapledIsWarnedOf) {
  const Issued must = issue("localhost", "localhost", &ca_, 31, 30, "http://ocsp.test/", true);
  config::Config cfg = listener("");
  config::ListenerTlsConfig& t = *cfg.listeners[0].tls;
  t.cert = write("must.pem", pem(must.cert.get()) + pem(ca_.cert.get()));
  t.key = write("must.key", pem(must.key.get()));
  for (const bool stapled : {false, true}) {
    t.ocsp_update = stapled;
    TlsContexts contexts;
    std::vector<std::string> errors;
    std::vector<std::string> warnings;
    ASSERT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
    if (stapled) {
      EXPECT_TRUE(warnings.empty()) << warnings.front();
      continue;
    }
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_EQ(warnings[0],
              "grelay.toml:7:1: warning: listener web: the certificate in cert file '" + t.cert +
                  "' requires OCSP stapling (\"must-staple\", TLS Feature "
                  "status_request) and the listener staples nothing: clients that "
                  "honour it (Firefox) refuse it; set ocsp_update = true or "
                  "ocsp_response");
  }
  // Others are not.
  TlsContexts contexts;
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
  ASSERT_TRUE(contexts.build(listener(""), false, &errors, &warnings)) << errors.front();
  EXPECT_TRUE(warnings.empty()) << warnings.front();
}

TEST_F(OcspUpdateTest, TheResponderIsTheCertificatesUnlessConfigured) {
  const Issued named = issue("localhost", "localhost", &ca_, 21, 30, "http://ocsp.test:8080/x");
  const Issued https = issue("localhost", "localhost", &ca_, 22, 30, "https://ocsp.test/");
  const struct {
    const Issued* leaf;
    std::string responder;
    std::string url;  // watched; "" = a warning instead
    std::string warning;
  } cases[] = {
      {&named, "", "http://ocsp.test:8080/x", ""},
      {&named, "http://10.1.2.3/", "http://10.1.2.3/", ""},
      {&server_, "", "", "names no OCSP responder (authorityInfoAccess)"},
      {&https, "", "", "names OCSP responder 'https://ocsp.test/', not an http:// URL"},
  };
  for (const auto& c : cases) {
    config::Config cfg = listener("");
    config::ListenerTlsConfig& t = *cfg.listeners[0].tls;
    t.cert = write("named.pem", pem(c.leaf->cert.get()) + pem(ca_.cert.get()));
    t.key = write("named.key", pem(c.leaf->key.get()));
    t.ocsp_update = true;
    t.ocsp_responder = c.responder;
    TlsContexts contexts;
    std::vector<std::string> errors;
    std::vector<std::string> warnings;
    ASSERT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
    if (c.url.empty()) {
      EXPECT_TRUE(contexts.ocspWatches().empty());
      ASSERT_EQ(warnings.size(), 1u) << c.warning;
      EXPECT_EQ(warnings[0],
                "grelay.toml:7:1: warning: listener web: ocsp_update: the certificate "
                "in cert file '" +
                    t.cert + "' " + c.warning + ": nothing is fetched for it (set ocsp_responder)");
    } else {
      EXPECT_TRUE(warnings.empty()) << warnings.front();
      ASSERT_EQ(contexts.ocspWatches().size(), 1u);
      EXPECT_EQ(contexts.ocspWatches()[0].url, c.url);
    }
  }
  // The issuer is needed to ask; a certificate with no responder to ask, a self-signed
  // default one say, goes without.
  config::Config cfg = listener("", true);
  cfg.listeners[0].tls->ocsp_update = true;
  TlsContexts contexts;
  std::vector<std::string> errors;
  std::vector<std::string> warnings;
  EXPECT_TRUE(contexts.build(cfg, false, &errors, &warnings)) << errors.front();
  EXPECT_EQ(warnings.size(), 1u);
  cfg.listeners[0].tls->ocsp_responder = "http://127.0.0.1:1/";
  EXPECT_FALSE(contexts.build(cfg, false, &errors));
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("ocsp_update: cert file '" + cfg.listeners[0].tls->cert +
                           "' has no issuer certificate after the server's"),
            std::string::npos)
      << errors[0];
}

}  // namespace
}  // namespace grelay::proxy
