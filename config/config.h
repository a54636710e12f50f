// Typed configuration: what config/loader.cc produces from a TOML file.
//
// Every value is validated by the loader; the rest of grelay trusts these structs.
// Defaults here are the documented defaults (README, "Configuration").
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <compare>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace grelay::config {

using Duration = std::chrono::milliseconds;

// Where a value came from, for error messages and --check output.
struct Location {
  std::string file;
  uint32_t line = 0;
  uint32_t column = 0;
};

// A resolved socket address (IPv4 or IPv6) plus the text the user wrote.
struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;  // as written, e.g. "127.0.0.1:8080" or "[::1]:8080"
  // HOST was a name, resolved with getaddrinfo, not an IP literal: resolve_interval may
  // look it up again.
  bool host_name = false;

  int family() const { return storage.ss_family; }
  // A Unix domain socket ("unix:/run/app.sock", "unix:@name" for the abstract namespace):
  // only upstream servers and mirrors may be one.
  bool isUnix() const { return storage.ss_family == AF_UNIX; }
  // The same socket address (whatever the text says).
  bool sameEndpoint(const Address& other) const {
    return length == other.length && std::memcmp(&storage, &other.storage, length) == 0;
  }
  const sockaddr* sockaddrPtr() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// An endpoint as a hashable key: the family, the port and the address (and an IPv6
// address's scope), so that lists of thousands of addresses (all_addresses) are matched
// with a hash lookup, not a scan. Equal keys: the same endpoint, whatever the text says.
std::string endpointKey(const Address& address);

// An IPv4 or IPv6 network: "10.0.0.0/8", "192.0.2.7" (a /32), "fd00::/8", "::1" (a /128).
struct Network {
  int family = AF_INET;
  std::array<uint8_t, 16> bytes{};  // the network address (the first 4 for IPv4), host bits 0
  uint32_t prefix = 0;              // 0..32 or 0..128
  std::string text;                 // as written

  // Whether a peer's address is in the network (an IPv4-mapped IPv6 address, as a dual-stack
  // listener sees IPv4 clients, counts as the IPv4 address).
  bool contains(const sockaddr_storage& address) const;
};

// A list of networks (allow, proxy_protocol_from) as written, indexed so that a lookup is a
// binary search over the address ranges they cover (merged, per family) rather than a scan
// of every network: an allow list of thousands of ranges costs an accept no more than a
// handful of compares.
class NetworkSet {
public:
  NetworkSet() = default;
  NetworkSet(std::initializer_list<Network> networks)
      : NetworkSet(std::vector<Network>(networks)) {}
  explicit NetworkSet(std::vector<Network> networks);

  // Whether one of the networks holds `address` (as Network::contains: an IPv4-mapped IPv6
  // address counts as the IPv4 address and matches IPv4 networks only).
  bool contains(const sockaddr_storage& address) const;

  bool empty() const { return networks_.empty(); }
  size_t size() const { return networks_.size(); }
  const Network& operator[](size_t i) const { return networks_[i]; }
  std::vector<Network>::const_iterator begin() const { return networks_.begin(); }
  std::vector<Network>::const_iterator end() const { return networks_.end(); }
  // Disjoint ranges the index holds, per family (tests: overlapping networks merge).
  size_t rangeCount() const { return v4_.size() + v6_.size(); }

private:
  struct Key {  // an IPv6 address as a 128-bit number
    uint64_t hi = 0;
    uint64_t lo = 0;
    auto operator<=>(const Key&) const = default;
  };
  std::vector<Network> networks_;
  std::vector<std::pair<uint32_t, uint32_t>> v4_;  // [first, last], sorted, disjoint
  std::vector<std::pair<Key, Key>> v6_;
};

// Whether a list of networks (allow, proxy_protocol_from) lets `address` in: an empty list
// lets everyone in.
bool admits(const NetworkSet& networks, const sockaddr_storage& address);

// A host name as grelay compares it: ASCII lower case, without the trailing dot of a fully
// qualified name ("Example.COM." names example.com).
std::string canonicalHostName(std::string_view name);

struct ListenerConfig;
// The index in `listener.routes` of the route for a client that asked for `serverName`
// (compared without case) with ALPN `protocols`, or kNoRoute: the listener's own upstream.
// Of the routes that match, one whose `alpn` matched wins over those without `alpn`; then
// an exact name over wildcards, a longer wildcard over a shorter one, any name over a
// route without `sni`. (The loader refuses two routes that could tie.)
size_t routeFor(const ListenerConfig& listener, std::string_view serverName,
                const std::vector<std::string>& protocols = {});

// "10.0.0.5:8080", "[fd00::5]:8080", "unix:/run/app.sock", "unix:@name" ("?" for another
// family).
std::string formatEndpoint(const sockaddr_storage& address);

// An "http://HOST[:PORT][/PATH]" URL, as OCSP responders have (a certificate's
// authorityInfoAccess, ocsp_responder). HOST: a name, an IPv4 address or a bracketed IPv6
// one (kept without brackets); PATH: "/" when absent, else as written (query included).
struct HttpUrl {
  std::string host;
  uint16_t port = 80;
  std::string path = "/";
};
// nullopt when `text` is not such a URL (another scheme, no host, a bad port, spaces or
// control characters, user info, a fragment).
std::optional<HttpUrl> parseHttpUrl(std::string_view text);

enum class RelayPath { Auto, Group, Mainline, Copy };
enum class Balance { RoundRobin, LeastConn, Source };
enum class HashType { Map, Consistent };
enum class MirrorDirection { Request, Both };
enum class ProxyProtocol { Off, V1, V2 };

const char* toString(RelayPath path);
const char* toString(Balance balance);
const char* toString(HashType type);
const char* toString(MirrorDirection direction);
const char* toString(ProxyProtocol version);

// The TLVs a version 2 PROXY protocol header sent upstream carries.
struct ProxyProtocolTlvs {
  bool alpn = false;       // the protocol negotiated with the client (TLS ALPN, else its header's)
  bool authority = false;  // the server name the client asked for (TLS SNI, else its header's)
  bool ssl = false;        // whether TLS was terminated here, its version and cipher
  bool unique_id = false;  // the session's ID, as in the access log
  bool received = false;   // the client's own header's TLVs (accept_proxy_protocol)
  bool crc32c = false;     // a checksum of the header
  bool any() const { return alpn || authority || ssl || unique_id || received || crc32c; }
};

struct ServerConfig {
  uint32_t workers = 1;  // 0 = one per CPU (resolved by the proxy at start)
  RelayPath relay_path = RelayPath::Auto;
  uint32_t chunk_size = 64 * 1024;   // bytes, 4KiB..1MiB
  uint32_t max_connections = 10000;  // across all listeners and workers, >= 1
  Duration drain_timeout{10'000};    // SIGTERM/SIGINT: finish sessions up to this long
  Duration shutdown_delay{0};        // SIGTERM/SIGINT: keep accepting this long first (/ready: 503)
  uint64_t buffer_pool = 16 * 1024 * 1024;  // bytes of receive buffers per worker
  std::string user;                         // drop root to this user after binding ("" = stay)
  // Mainline path: a direction with one target (no mirror takes it, no tap, no TLS) moves
  // through a pipe with splice(2): no copy into userspace.
  bool splice = true;
  Location location;
};

struct AdminConfig {
  std::optional<Address> listen;  // GET /metrics; absent = no admin endpoint
  // GET /healthz fails once a loop (a worker's, the main thread's) has not gone round for
  // this long.
  Duration stall_timeout{10'000};
};

struct UpstreamTlsConfig {
  bool enabled = false;
  std::string ca;   // PEM file of trusted CAs; "" = system default store
  std::string sni;  // server name sent and verified; "" = none
  bool verify = true;
  std::vector<std::string> alpn;  // protocols offered (ALPN), in order; empty = none
  // Sessions send the name their client asked for (its SNI to a TLS listener, else its
  // PROXY header's authority) as SNI and verify the server's certificate against it;
  // without one, `sni` (or the host) as usual. Health checks use `sni` too.
  bool forward_sni = false;
  // With verify: certificate revocation lists (PEM, one per CA of a chain); a server whose
  // certificate is revoked fails its handshake. "" = none.
  std::string crl;
  std::string cert;  // a client certificate chain (PEM) for servers that ask (mTLS); "" = none
  std::string key;   // its private key (PEM)
  // Key exchange groups offered, in order of preference (OpenSSL names: "X25519", "P-256",
  // "P-384", "ffdhe2048", ...); empty = X25519, P-256, P-384.
  std::vector<std::string> groups;
  // Sessions resume the TLS session of an earlier connection to the same server and name
  // (nginx's proxy_ssl_session_reuse): no key exchange, no certificate chain to verify.
  bool session_reuse = true;
  Location location;  // of the tls value
};

// One server of an upstream pool.
struct UpstreamServer {
  Address address;
  // The `server` label of its per-server metrics ([A-Za-z0-9_-]+, unique in the pool);
  // "" = its index in `servers` ("0", "1", ...).
  std::string name{};
  // Share of the pool's new sessions relative to the other servers (round_robin: smooth
  // weighted rotation; least_conn: open connections per unit of weight). 1..256.
  uint32_t weight = 1;
  // Tried only after every non-backup server of the pool (and before servers marked
  // down); at least one server of a pool is not a backup.
  bool backup = false;
  // Connections (open or connecting, all workers) the server takes at most; a session
  // finding it full tries the pool's next server. 0 = no limit.
  uint32_t max_conns = 0;
  // all_addresses = true: the server stands for every address its host name resolves to
  // (a headless Kubernetes service, a DNS name with several A/AAAA records). It is
  // expanded into one server per address (expandServer), each with the fields above;
  // `address.text` is then that address ("10.0.0.5:8080") and `host` the "HOST:PORT" as
  // written, which lookups and TLS names use.
  bool all_addresses = false;
  std::string host{};
  // Its place in `servers` as written: the default `server` label, and what the servers
  // expanded from one entry have in common.
  uint32_t entry = 0;

  // The `server` label of its per-server metrics: `name`, else `entry`; for an expanded
  // server followed by "@" and its address ("app@10.0.0.5:8080", "0@10.0.0.5:8080").
  std::string label() const;
  // The "HOST:PORT" to look up again and to take TLS names from.
  const std::string& written() const { return host.empty() ? address.text : host; }
};

// The servers `entry` (all_addresses = true) stands for, one per address of `answers` in
// that order, leaving out an address already in `others` (another server of the pool).
std::vector<UpstreamServer> expandServer(const UpstreamServer& entry,
                                         const std::vector<Address>& answers,
                                         const std::vector<UpstreamServer>& others);

struct UpstreamConfig {
  std::string name;
  std::vector<UpstreamServer> servers;  // at least one, at least one not a backup
  Balance balance = Balance::RoundRobin;
  // balance = "source": Map picks a place in the weighted rotation by the client hash
  // (adding, removing or reweighting a server moves most clients); Consistent places
  // every server on a hash ring (160 points per unit of weight, by its name, else its
  // address text), so such a change moves only the clients of that server's arcs.
  HashType hash_type = HashType::Map;
  // Passive health: after max_fails consecutive failed connects (or upstream TLS
  // handshakes) a server is tried only after the pool's other servers, for fail_timeout.
  // 0 = never.
  uint32_t max_fails = 1;
  Duration fail_timeout{10'000};
  // Per connect attempt to a server of the pool (and its TLS handshake); absent: the
  // listener's connect_timeout (a local pool and a distant one behind one listener's routes
  // want different ones: Envoy's cluster connect_timeout, HAProxy's backend timeout connect).
  std::optional<Duration> connect_timeout;
  // Active health checks: every check_interval each server gets a TCP connect (then a
  // close); a failed or timed-out check counts like a failed connect toward max_fails,
  // and a good one brings a server marked down back at once. 0 = off (the default).
  Duration check_interval{0};
  Duration check_timeout{2'000};
  // Health checks in a row that must connect before a server marked down is back in
  // rotation; until then it stays down, fail_timeout or not (HAProxy's `rise`). 1..1000;
  // used with check_interval.
  uint32_t check_passes = 1;
  // What a health check says once connected (and through TLS with tls), and what the
  // reply must contain for the check to pass (HAProxy's tcp-check send/expect string,
  // nginx's match): "PING\r\n" / "+PONG". Both "" = a connect (and handshake) is enough.
  std::string check_send;
  std::string check_expect;
  // The port health checks connect to, on each server's address (a separate health or
  // admin port: HAProxy's `port`, nginx's `port=`); 0 = the server's own port.
  uint16_t check_port = 0;
  // Slow start (HAProxy's `slowstart`, nginx's `slow_start`): a server back from being
  // marked down, or added to the pool by a reload or a DNS move, takes a share of its
  // turns that grows linearly from 0 to all of them over this long (round_robin: turns
  // it declines go to the next server; least_conn: its weight is scaled). Not at start-up,
  // not with balance = "source". 0 = off (the default).
  Duration slow_start{0};
  // When every server a session may use is at max_conns, it waits up to this long for a
  // slot (HAProxy's `timeout queue`) instead of being reset at once. 0 = no waiting.
  Duration queue_timeout{0};
  // Sessions that may wait so at once (all workers); one more is reset at once. 0 = any.
  uint32_t max_queue = 0;
  // Servers written with a host name are looked up again every resolve_interval; when
  // the address in use is no longer among the answers, new sessions take the first answer
  // (applied in place; open sessions stay where they are). A failed lookup
  // keeps the address in use. 0 = resolved once, at load time (the default).
  Duration resolve_interval{0};
  // With resolve_interval: an address a name no longer answers is kept this long after
  // the last answer that had it (HAProxy's `hold obsolete`), so a resolver that answers a
  // changing subset of the addresses moves nothing. 0 = dropped at once.
  Duration resolve_hold{0};
  // A PROXY protocol header (the client's and the listener's address) sent to the server
  // first on every connection, before TLS when the pool uses TLS.
  ProxyProtocol proxy_protocol = ProxyProtocol::Off;
  // With proxy_protocol v2 (proxy_protocol_tlvs): what the header carries after the
  // addresses.
  ProxyProtocolTlvs proxy_protocol_tlvs;
  UpstreamTlsConfig tls;
  // The local address connections to the servers and health checks leave from (nginx's
  // proxy_bind, HAProxy's source, Envoy's source_address): an IP address of the servers'
  // family, port 0 (the port is picked at connect, IP_BIND_ADDRESS_NO_PORT). Absent = the
  // kernel's choice.
  std::optional<Address> source_address;
  Location location;
};

struct MirrorConfig {
  std::string name;
  Address address;  // one of address and upstream (then length 0)
  // The name of an [upstream.NAME] pool: each sampled session's copy goes to one of its
  // servers, picked by the pool's balance among those not marked down and below max_conns
  // (the pool's health checks, passive health and DNS moves apply, not this mirror's).
  std::string upstream;
  size_t upstream_index = 0;
  uint32_t sample_percent = 100;       // 0..100
  uint64_t max_lag = 8 * 1024 * 1024;  // bytes, >= chunk_size
  MirrorDirection direction = MirrorDirection::Request;
  // Passive health, as for upstream servers: after max_fails connects to the mirror in a
  // row fail, sampled sessions skip it for fail_timeout (the first after it probes).
  // 0 = every sampled session tries it.
  uint32_t max_fails = 1;
  Duration fail_timeout{10'000};
  Duration resolve_interval{0};           // as for upstream pools; a host name only
  Duration resolve_hold{0};               // as for upstream pools
  std::optional<Address> source_address;  // as for upstream pools
  // A PROXY protocol header first on every connection to the mirror (the client's and the
  // listener's address, and with v2 the TLVs asked for), so a sink attributes the traffic
  // it analyses; as for upstream pools.
  ProxyProtocol proxy_protocol = ProxyProtocol::Off;
  ProxyProtocolTlvs proxy_protocol_tlvs;
  Location location;
};

struct TapConfig {
  std::string path;                           // directory for this listener's tap files
  uint64_t max_size = 1024ull * 1024 * 1024;  // bytes on disk; past it recording stops (counted)
  uint64_t max_lag = 8 * 1024 * 1024;         // bytes of unfinished tap writes per session
  Location location;
};

// A certificate chain and its key (PEM files).
struct CertificateFiles {
  std::string cert;
  std::string key;
  Location location;
  // A DER OCSP response for the certificate (from its CA's responder), stapled to the
  // handshake of every client that asks (status_request) while it is current; "" = none.
  std::string ocsp_response;
};

struct ListenerTlsConfig {
  std::string cert;           // PEM certificate chain: the default
  std::string key;            // PEM private key
  std::string ocsp_response;  // for `cert`: see CertificateFiles
  // More certificates, each chosen for the clients whose SNI names one of its DNS names.
  std::vector<CertificateFiles> certs;
  // Only clients whose SNI names a DNS name of a certificate (cert or certs) are served;
  // any other name, or none, fails the handshake (HAProxy's strict-sni).
  bool strict_sni = false;
  // TLS session resumption by ticket (TLS 1.3 and 1.2): a returning client skips the key
  // exchange and the certificate. The ticket keys are made when the configuration is
  // loaded and shared by the workers; a reload makes new ones (older tickets then get a
  // full handshake). false = no tickets (TLS 1.2 clients may still resume by session ID).
  bool session_tickets = true;
  // A new ticket key this often; a ticket opens with the newest key or the one before, so a
  // key is used for at most two periods. 1s..24h.
  Duration session_ticket_rotation{3'600'000};
  // Ticket keys from files instead (nginx's ssl_session_ticket_key): 80 bytes each (48:
  // AES-128, nginx's older keys); the first seals tickets, every one opens them. Instances
  // sharing the files resume each other's tickets; rotation is the files' (and SIGHUP).
  std::vector<std::string> session_ticket_keys;
  Duration handshake_timeout{10'000};
  std::string min_version = "1.2";  // "1.2" or "1.3"
  std::string ciphers;              // TLS 1.2 cipher list; "" = Mozilla "intermediate"
  std::string ciphersuites;         // TLS 1.3 suites; "" = OpenSSL's defaults (all AEAD)
  // Key exchange groups (curves) accepted, in order of preference (nginx's ssl_ecdh_curve,
  // HAProxy's curves); empty = X25519, P-256, P-384.
  std::vector<std::string> groups;
  // ALPN: the first of these (in this order) that the client offers is chosen; none in
  // common (or an empty list) = no ALPN, the handshake goes on.
  std::vector<std::string> alpn;
  // Client certificates (mTLS): asked for and verified against these CAs (PEM); "" = not
  // asked for. Required unless client_verify = "optional" (then a client may send none,
  // but one it sends must verify).
  std::string client_ca;
  bool client_cert_optional = false;
  // With client_ca: certificate revocation lists (PEM), one for each CA of a chain;
  // a revoked client certificate fails the handshake. "" = none.
  std::string client_crl;
  // OCSP responses fetched by grelay (nginx's ssl_stapling, HAProxy's ocsp-update): each
  // certificate's (cert and certs) from its CA's responder (its authorityInfoAccess URL,
  // or ocsp_responder), at start and then before the one stapled gets old: halfway
  // through its validity, within min_delay..max_delay (min_delay after a failure).
  bool ocsp_update = false;
  std::string ocsp_responder;                 // "http://..." for every certificate; "" = AIA
  std::string ocsp_proxy;                     // "http://HOST:PORT": an HTTP proxy to ask through
  Duration ocsp_update_min_delay{300'000};    // 1s..24h
  Duration ocsp_update_max_delay{3'600'000};  // 1s..24h, >= min_delay
  Location location;
};

// Sessions whose client asks for one of `sni` (and one of `alpn`) go to `upstream` rather
// than the listener's pool. The name and protocols are those of the client's TLS
// handshake: on a listener with `tls`, the name it sent and the protocol grelay's
// handshake chose; otherwise read ahead from the ClientHello, which stays in the stream for
// the server: the name and the protocols it offers.
struct RouteConfig {
  // Lower-case host names; "*.example.com" stands for every name under example.com (any
  // depth). Empty = any name (then `alpn` is not).
  std::vector<std::string> sni;
  // ALPN protocol names ("h2", "acme-tls/1"); empty = whatever the client offers or none.
  std::vector<std::string> alpn;
  std::string upstream;       // name of an [upstream.NAME] table
  size_t upstream_index = 0;  // index into Config::upstreams
  Location location;
};

inline constexpr size_t kNoRoute = static_cast<size_t>(-1);

struct ListenerConfig {
  std::string name;
  Address listen;
  // Name of an [upstream.NAME] table: where sessions go that no route takes. "" (only with
  // routes) = none: those sessions are reset.
  std::string upstream;
  size_t upstream_index = 0;  // index into Config::upstreams (with an upstream)
  Duration connect_timeout{5'000};
  Duration idle_timeout{3'600'000};
  // A session open this long is reset, busy or not (Envoy's max_connection_duration), so
  // long-lived connections come back through the balancing now and then. 0 = no limit.
  Duration max_session_duration{0};
  // TCP keepalive on the session's sockets (client, upstream, mirrors): probes after this
  // long without traffic, every third of it, 3 unanswered ones end the connection. 0 = off.
  Duration tcp_keepalive{0};
  uint32_t max_connections = 0;  // per listener; 0 = only the server-wide limit
  // Sessions one client address may have open on this listener (behind a PROXY header,
  // the address it carries); 0 = no limit.
  uint32_t max_connections_per_client = 0;
  // New connections one client address may open per second on this listener (all workers,
  // a burst of as many); more are reset. 0 = no limit.
  uint32_t max_connection_rate_per_client = 0;
  // New connections the listener accepts per second (all workers), spaced evenly with a
  // burst of a tenth of a second's worth; the others wait in the kernel's accept queue.
  // 0 = no limit.
  uint32_t max_connection_rate = 0;
  // Clients (a load balancer) start every connection with a PROXY protocol header (v1 or
  // v2), read before TLS; its addresses replace the connection's. Within connect_timeout.
  bool accept_proxy_protocol = false;
  // With accept_proxy_protocol: the peers allowed to send a header (the load balancers).
  // A connection from anywhere else is reset before a byte is read, as a header could
  // claim any client address. Empty = any peer.
  NetworkSet proxy_protocol_from;
  // The client addresses (behind a PROXY header, the one it carries) allowed to use the
  // listener; any other client is reset before TLS or any upstream connect. Empty = all.
  NetworkSet allow;
  std::string access_log;  // a file getting one JSON line per finished session; "" = none
  std::optional<ListenerTlsConfig> tls;
  // By server name, in place of `upstream` (which takes any other name, or none).
  std::vector<RouteConfig> routes;
  std::vector<MirrorConfig> mirrors;
  std::optional<TapConfig> tap;
  Location location;
};

struct Config {
  std::string path;  // the file it was loaded from
  ServerConfig server;
  AdminConfig admin;
  std::vector<UpstreamConfig> upstreams;
  std::vector<ListenerConfig> listeners;  // at least one
};

}  // namespace grelay::config
