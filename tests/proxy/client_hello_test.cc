// The ClientHello parser against real hellos from OpenSSL's client (TLS 1.3 and TLS 1.2,
// with and without a server name), the same hellos cut into prefixes and re-fragmented into
// records, hellos built field by field to break one rule at a time, and streams that are not
// TLS at all.
#include "proxy/client_hello.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace grelay::proxy {
namespace {

using Status = ClientHelloParse::Status;

ClientHelloParse parse(const std::string& bytes, size_t length) {
  // A copy of exactly `length` bytes, so ASan builds catch a read past the prefix.
  const std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + length);
  return parseClientHello(prefix.data(), prefix.size());
}

ClientHelloParse parse(const std::string& bytes) {
  return parse(bytes, bytes.size());
}

// The first flight of OpenSSL's client: the ClientHello in its record(s).
std::string opensslHello(const char* serverName, int maxVersion = TLS1_3_VERSION,
                         const std::string& alpnWire = "") {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        &SSL_CTX_free);
  if (!ctx || SSL_CTX_set_max_proto_version(ctx.get(), maxVersion) != 1) {
    return "";
  }
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), &SSL_free);
  if (!ssl) {
    return "";
  }
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), in, out);  // the SSL owns both now
  if (serverName != nullptr && SSL_set_tlsext_host_name(ssl.get(), serverName) != 1) {
    return "";
  }
  if (!alpnWire.empty() &&
      SSL_set_alpn_protos(ssl.get(), reinterpret_cast<const unsigned char*>(alpnWire.data()),
                          static_cast<unsigned>(alpnWire.size())) != 0) {
    return "";
  }
  if (SSL_connect(ssl.get()) == 1) {
    return "";  // no server: it cannot have finished
  }
  char* bytes = nullptr;
  const long n = BIO_get_mem_data(out, &bytes);
  return n > 0 ? std::string(bytes, static_cast<size_t>(n)) : "";
}

void appendBe(std::string& out, size_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  }
}

// The handshake bytes the records of a well-formed stream carry.
std::string payloadOf(const std::string& records) {
  std::string out;
  for (size_t at = 0; at + 5 <= records.size();) {
    const size_t n =
        (static_cast<uint8_t>(records[at + 3]) << 8) | static_cast<uint8_t>(records[at + 4]);
    out += records.substr(at + 5, n);
    at += 5 + n;
  }
  return out;
}

// `payload` in handshake records of at most `size` bytes each.
std::string inRecords(const std::string& payload, size_t size) {
  std::string out;
  for (size_t at = 0; at < payload.size(); at += size) {
    const std::string piece = payload.substr(at, size);
    out += "\x16\x03\x01";
    appendBe(out, piece.size(), 2);
    out += piece;
  }
  return out;
}

// A ClientHello message (header included) with the given extensions (none at all for
// nullopt), built field by field.
using Extensions = std::vector<std::pair<uint16_t, std::string>>;

std::string helloMessage(const std::optional<Extensions>& extensions,
                         const std::string& sessionId = std::string(32, '\x5a'),
                         const std::string& cipherSuites = std::string("\x13\x01\x13\x02", 4),
                         const std::string& compression = std::string(1, '\0')) {
  std::string body("\x03\x03", 2);
  body += std::string(32, '\x42');  // random
  appendBe(body, sessionId.size(), 1);
  body += sessionId;
  appendBe(body, cipherSuites.size(), 2);
  body += cipherSuites;
  appendBe(body, compression.size(), 1);
  body += compression;
  if (extensions) {
    std::string all;
    for (const auto& [type, data] : *extensions) {
      appendBe(all, type, 2);
      appendBe(all, data.size(), 2);
      all += data;
    }
    appendBe(body, all.size(), 2);
    body += all;
  }
  std::string message("\x01", 1);
  appendBe(message, body.size(), 3);
  return message + body;
}

// server_name's data: a ServerNameList of (name_type, name) entries.
std::string serverNameList(const std::vector<std::pair<uint8_t, std::string>>& names) {
  std::string list;
  for (const auto& [type, name] : names) {
    appendBe(list, type, 1);
    appendBe(list, name.size(), 2);
    list += name;
  }
  std::string data;
  appendBe(data, list.size(), 2);
  return data + list;
}

std::pair<uint16_t, std::string> sni(const std::string& name) {
  return {0, serverNameList({{0, name}})};
}

// Extensions a little like a real client's around the server name.
Extensions typicalExtensions(const std::string& name) {
  return {{0x000a, std::string("\x00\x02\x00\x1d", 4)},  // supported_groups: x25519
          sni(name),
          {0x002b, std::string("\x02\x03\x04", 3)}};  // supported_versions: TLS 1.3
}

std::string helloRecord(const std::optional<Extensions>& extensions) {
  return inRecords(helloMessage(extensions), 16384);
}

// Where the length fields of a well-formed single-record hello are: offset and width.
std::vector<std::pair<size_t, int>> lengthFields(const std::string& hello) {
  auto at = [&](size_t i) { return static_cast<uint8_t>(hello[i]); };
  auto be16 = [&](size_t i) { return (size_t{at(i)} << 8) | at(i + 1); };
  std::vector<std::pair<size_t, int>> fields = {{3, 2}, {6, 3}};
  size_t p = 5 + 4 + 2 + 32;
  fields.push_back({p, 1});  // session_id
  p += 1 + at(p);
  fields.push_back({p, 2});  // cipher_suites
  p += 2 + be16(p);
  fields.push_back({p, 1});  // compression_methods
  p += 1 + at(p);
  fields.push_back({p, 2});  // extensions
  const size_t end = p + 2 + be16(p);
  for (p += 2; p + 4 <= end;) {
    const size_t type = be16(p);
    const size_t n = be16(p + 2);
    fields.push_back({p + 2, 2});
    if (type == 0) {
      fields.push_back({p + 4, 2});  // ServerNameList
      fields.push_back({p + 7, 2});  // the first name
    }
    p += 4 + n;
  }
  return fields;
}

std::string withLength(std::string bytes, const std::pair<size_t, int>& field, int delta) {
  size_t value = 0;
  for (int i = 0; i < field.second; ++i) {
    value = (value << 8) | static_cast<uint8_t>(bytes[field.first + i]);
  }
  std::string changed;
  appendBe(changed, value + delta, field.second);
  return bytes.replace(field.first, field.second, changed);
}

// `message` with `tail` added to its body.
std::string withBodyTail(const std::string& message, const std::string& tail) {
  return withLength(message, {1, 3}, static_cast<int>(tail.size())) + tail;
}

void expectName(const std::string& bytes, const std::string& name) {
  const ClientHelloParse p = parse(bytes);
  EXPECT_EQ(p.status, Status::Done);
  EXPECT_EQ(p.serverName, name);
}

void expectInvalid(const std::string& bytes) {
  const ClientHelloParse p = parse(bytes);
  EXPECT_EQ(p.status, Status::Invalid);
  EXPECT_EQ(p.serverName, "");
}

TEST(ClientHello, FindsTheNameInATls13Hello) {
  const std::string hello = opensslHello("www.example.com");
  ASSERT_FALSE(hello.empty());
  expectName(hello, "www.example.com");
}

TEST(ClientHello, FindsTheNameInATls12OnlyHello) {
  const std::string hello = opensslHello("legacy.example.org", TLS1_2_VERSION);
  ASSERT_FALSE(hello.empty());
  expectName(hello, "legacy.example.org");
  EXPECT_NE(hello, opensslHello("legacy.example.org"));  // no supported_versions, key_share
}

TEST(ClientHello, WithoutServerNameIsDoneWithAnEmptyName) {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    const std::string hello = opensslHello(nullptr, version);
    ASSERT_FALSE(hello.empty());
    expectName(hello, "");
  }
  expectName(helloRecord(std::nullopt), "");  // no extensions block at all
  expectName(helloRecord(Extensions{}), "");  // an empty one
  // server_name with only a name type other than host_name.
  expectName(helloRecord(Extensions{{0, serverNameList({{7, "x"}})}}), "");
}

TEST(ClientHello, EveryProperPrefixIsIncompleteAndItsNeedMakesProgress) {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    const std::string hello = opensslHello("prefix.example", version);
    ASSERT_FALSE(hello.empty());
    for (size_t n = 0; n < hello.size(); ++n) {
      const ClientHelloParse p = parse(hello, n);
      ASSERT_EQ(p.status, Status::Incomplete) << n;
      EXPECT_GT(p.need, n);
      EXPECT_LE(p.need, hello.size()) << n;
      EXPECT_EQ(p.serverName, "");
      const ClientHelloParse next = parse(hello, p.need);
      EXPECT_TRUE(next.status == Status::Done ||
                  (next.status == Status::Incomplete && next.need > p.need))
          << n;
    }
    // Following `need` from nothing: the record header, then as much of the record as the
    // shortest ClientHello takes (version, random and one-byte lists: 4 + 41 bytes), then the
    // message as its header says.
    EXPECT_EQ(parse(hello, 5).need, 5u + 4 + 41);
    size_t length = 0;
    int steps = 0;
    for (ClientHelloParse p = parse(hello, 0); p.status == Status::Incomplete;
         p = parse(hello, length)) {
      length = p.need;
      ++steps;
    }
    EXPECT_EQ(length, hello.size());
    EXPECT_LE(steps, 3);
  }
}

TEST(ClientHello, RefragmentedRecordsParseTheSame) {
  const std::string hello = opensslHello("fragments.example.net");
  ASSERT_FALSE(hello.empty());
  const std::string payload = payloadOf(hello);
  for (size_t size : {1, 7, 100}) {
    const std::string records = inRecords(payload, size);
    expectName(records, "fragments.example.net");
    for (size_t n = 0; n < records.size(); ++n) {
      const ClientHelloParse p = parse(records, n);
      ASSERT_EQ(p.status, Status::Incomplete) << size << " " << n;
      ASSERT_GT(p.need, n);
      ASSERT_LE(p.need, records.size());
    }
  }
  // The message's header split between records, and three records as some clients send.
  expectName(inRecords(payload, 2), "fragments.example.net");
  const size_t third = payload.size() / 3;
  expectName(inRecords(payload.substr(0, third), third) +
                 inRecords(payload.substr(third, third), third) +
                 inRecords(payload.substr(2 * third), payload.size()),
             "fragments.example.net");
}

TEST(ClientHello, BytesAfterTheHelloAreIgnored) {
  const std::string hello = opensslHello("trailing.example");
  ASSERT_FALSE(hello.empty());
  expectName(hello + std::string("\x17\x03\x03\x00\x05hello", 10), "trailing.example");
  expectName(hello + "GET / HTTP/1.1\r\n", "trailing.example");
  // Inside the hello's own record, after the message: a Done result does not wait for them.
  const std::string payload = payloadOf(hello);
  const std::string padded = inRecords(payload + std::string(300, '\xee'), 16384);
  expectName(padded, "trailing.example");
  const ClientHelloParse p = parse(padded, 5 + payload.size());
  EXPECT_EQ(p.status, Status::Done);
  EXPECT_EQ(parse(padded, 5 + payload.size() - 1).need, 5 + payload.size());
}

TEST(ClientHello, HttpRequestIsInvalidAtTheFirstByte) {
  const std::string request = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
  for (size_t n = 1; n <= request.size(); ++n) {
    EXPECT_EQ(parse(request, n).status, Status::Invalid) << n;
  }
  const ClientHelloParse nothing = parse("", 0);
  EXPECT_EQ(nothing.status, Status::Incomplete);
  EXPECT_EQ(nothing.need, 5u);
}

TEST(ClientHello, Sslv2StyleHelloIsInvalid) {
  // A 2-byte length with the top bit set, MSG-CLIENT-HELLO, version 3.1, then the lengths.
  const std::string v2("\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", 11);
  EXPECT_EQ(parse(v2, 1).status, Status::Invalid);
  expectInvalid(v2 + std::string(0x2e - 9, '\x01'));
}

TEST(ClientHello, OtherRecordTypesAreInvalid) {
  expectInvalid(std::string("\x15\x03\x03\x00\x02\x02\x28", 7));  // a fatal alert
  expectInvalid(std::string("\x17\x03\x03\x00\x01x", 6));         // application data
  // A change_cipher_spec between two fragments of the hello.
  const std::string payload = payloadOf(opensslHello("split.example"));
  ASSERT_FALSE(payload.empty());
  expectInvalid(inRecords(payload.substr(0, 50), 50) + std::string("\x14\x03\x03\x00\x01\x01", 6) +
                inRecords(payload.substr(50), 16384));
  // A record of major version 2, and a handshake message other than a ClientHello.
  std::string hello = helloRecord(typicalExtensions("a.example"));
  expectName(hello, "a.example");
  expectInvalid(std::string(hello).replace(1, 1, "\x02"));
  expectInvalid(std::string(hello).replace(5, 1, "\x02"));
  EXPECT_EQ(parse(std::string(hello).replace(5, 1, "\x02"), 6).status, Status::Invalid);
}

TEST(ClientHello, RecordLengthsOutsideOneTo16384AreInvalid) {
  const std::string message = helloMessage(typicalExtensions("a.example"));
  expectInvalid(std::string("\x16\x03\x01\x00\x00", 5) + inRecords(message, 16384));
  std::string big("\x16\x03\x01\x40\x01", 5);
  expectInvalid(big + message + std::string(16385 - message.size(), '\0'));
  // 0x4100 or more, from the high byte alone; 0x40.. may still be 0x4000.
  EXPECT_EQ(parse(std::string("\x16\x03\x01\x41", 4)).status, Status::Invalid);
  EXPECT_EQ(parse(big, 4).status, Status::Incomplete);
  std::string largest("\x16\x03\x01\x40\x00", 5);
  expectName(largest + message + std::string(16384 - message.size(), '\0'), "a.example");
}

TEST(ClientHello, CorruptedLengthsNeverGiveAWrongName) {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    const std::string hello = opensslHello("corrupt.example", version);
    ASSERT_FALSE(hello.empty());
    const auto fields = lengthFields(hello);
    ASSERT_GE(fields.size(), 9u);
    for (const auto& field : fields) {
      for (int delta : {1, -1}) {
        const std::string bad = withLength(hello, field, delta);
        const ClientHelloParse p = parse(bad);
        // Only a record longer than the hello can still carry it whole.
        if (field.first == 3 && delta == 1) {
          EXPECT_EQ(p.status, Status::Done);
          EXPECT_EQ(p.serverName, "corrupt.example");
          continue;
        }
        EXPECT_NE(p.status, Status::Done) << field.first << " " << delta;
        EXPECT_EQ(p.serverName, "");
        for (size_t n = 0; n < bad.size(); ++n) {
          const ClientHelloParse q = parse(bad, n);
          ASSERT_NE(q.status, Status::Done) << field.first << " " << delta << " " << n;
          // Invalid stays Invalid with more bytes.
          ASSERT_TRUE(q.status == Status::Incomplete || p.status == Status::Invalid);
        }
      }
    }
  }
}

TEST(ClientHello, MalformedFieldsAreInvalid) {
  const std::string ok = helloRecord(typicalExtensions("a.example"));
  expectName(ok, "a.example");
  const auto ext = typicalExtensions("a.example");
  const std::string ciphers("\x13\x01", 2);
  expectInvalid(inRecords(helloMessage(ext, std::string(33, 'x')), 16384));  // session_id
  expectInvalid(inRecords(helloMessage(ext, "", std::string("\x13\x01\x13", 3)), 16384));
  expectInvalid(inRecords(helloMessage(ext, "", ""), 16384));                 // no cipher suites
  expectInvalid(inRecords(helloMessage(ext, "", ciphers, ""), 16384));        // no compression
  expectName(inRecords(helloMessage(ext, "", ciphers), 16384), "a.example");  // shortest
  // The extensions' length short of the body's end, and past it.
  std::string message = helloMessage(ext);
  const size_t extensionsAt = 4 + 2 + 32 + 1 + 32 + 2 + 4 + 1 + 1;
  expectInvalid(inRecords(withLength(message, {extensionsAt, 2}, -1), 16384));
  expectInvalid(inRecords(withLength(message, {extensionsAt, 2}, 1), 16384));
  // A body ending inside the extensions' length, and one without a whole extension header.
  const std::string bare = helloMessage(std::nullopt);
  expectInvalid(inRecords(withBodyTail(bare, std::string(1, '\0')), 16384));
  expectInvalid(inRecords(withBodyTail(bare, std::string("\x00\x01\x00", 3)), 16384));
  expectName(inRecords(withBodyTail(bare, std::string("\x00\x00", 2)), 16384), "");
  // server_name: an empty list, a list short of the extension, an entry past the list.
  expectInvalid(helloRecord(Extensions{{0, std::string("\x00\x00", 2)}}));
  expectInvalid(helloRecord(Extensions{{0, serverNameList({{0, "a.example"}}) + "x"}}));
  expectInvalid(helloRecord(Extensions{{0, std::string("\x00\x04\x00\x00\x09x", 6)}}));
  expectInvalid(helloRecord(Extensions{{0, ""}}));
  // A message too short to be a ClientHello at all.
  expectInvalid(inRecords(std::string("\x01\x00\x00\x00", 4), 16384));
}

TEST(ClientHello, MalformedFieldsAreInvalidBeforeTheRestArrives) {
  const std::string tooLongSessionId =
      inRecords(helloMessage(typicalExtensions("a.example"), std::string(33, 'x')), 16384);
  EXPECT_EQ(parse(tooLongSessionId, 5 + 4 + 2 + 32 + 1).status, Status::Invalid);
  // A host_name over 255 bytes is refused at its length, before its bytes.
  const std::string longName = helloRecord(Extensions{sni(std::string(300, 'n'))});
  const size_t nameAt = longName.find(std::string(300, 'n'));
  ASSERT_NE(nameAt, std::string::npos);
  EXPECT_EQ(parse(longName, nameAt).status, Status::Invalid);
  EXPECT_EQ(parse(longName, nameAt - 1).status, Status::Incomplete);
}

TEST(ClientHello, HostNameIsOneTo255Bytes) {
  expectName(helloRecord(typicalExtensions(std::string(255, 'a'))), std::string(255, 'a'));
  expectInvalid(helloRecord(typicalExtensions(std::string(256, 'a'))));
  expectInvalid(helloRecord(typicalExtensions("")));
  expectName(helloRecord(typicalExtensions("x")), "x");
  // Sent as is: no case folding, no check of the characters.
  expectName(helloRecord(typicalExtensions("Mixed.Example.")), "Mixed.Example.");
}

TEST(ClientHello, TheFirstHostNameIsTaken) {
  expectName(helloRecord(Extensions{
                 {0, serverNameList({{1, "other"}, {0, "first.example"}, {0, "second.example"}})}}),
             "first.example");
  // Later entries are not checked against the host_name rules, only for their shape.
  expectName(helloRecord(Extensions{{0, serverNameList({{0, "first.example"}, {0, ""}})}}),
             "first.example");
}

TEST(ClientHello, TwoServerNameExtensionsAreInvalid) {
  expectInvalid(helloRecord(Extensions{sni("one.example"), {0x0a, ""}, sni("two.example")}));
  expectInvalid(helloRecord(Extensions{sni("same.example"), sni("same.example")}));
}

TEST(ClientHello, AHelloPastThePeekLimitIsInvalid) {
  // In 1-byte records a message of M bytes takes 6 * M of the stream: 3072 bytes fill the
  // limit exactly, one more does not fit.
  auto padded = [](size_t messageSize, size_t recordSize) {
    Extensions ext = {sni("big.example"), {0x15, ""}};  // padding, filled in below
    const size_t base = helloMessage(ext).size();
    ext[1].second.assign(messageSize - base, '\0');
    const std::string message = helloMessage(ext);
    EXPECT_EQ(message.size(), messageSize);
    return inRecords(message, recordSize);
  };
  const std::string fits = padded(kMaxClientHelloPeek / 6, 1);
  ASSERT_EQ(fits.size(), kMaxClientHelloPeek);
  expectName(fits, "big.example");
  const std::string over = padded(kMaxClientHelloPeek / 6 + 1, 1);
  expectInvalid(over);
  // Refused before the limit: once there is no room left for the rest.
  const ClientHelloParse early = parse(over, kMaxClientHelloPeek - 6);
  EXPECT_EQ(early.status, Status::Invalid);
  for (size_t n = 0; n < kMaxClientHelloPeek - 12; n += 97) {
    const ClientHelloParse p = parse(over, n);
    ASSERT_EQ(p.status, Status::Incomplete) << n;
    ASSERT_LE(p.need, kMaxClientHelloPeek);
  }
  // In records of 2^14 the limit leaves room for a message of kMaxClientHelloPeek - 10
  // bytes (two record headers); a longer one is refused once its length is in, even though
  // its first record alone would fit.
  const std::string twoRecords = padded(kMaxClientHelloPeek - 10, 16384);
  ASSERT_EQ(twoRecords.size(), kMaxClientHelloPeek);
  expectName(twoRecords, "big.example");
  const std::string twoRecordsOver = padded(kMaxClientHelloPeek - 9, 16384);
  expectInvalid(twoRecordsOver);
  EXPECT_EQ(parse(twoRecordsOver, 9).status, Status::Invalid);
  EXPECT_EQ(parse(twoRecords, 9).need, 5u + 16384);
  // A message whose own length says it cannot fit, as soon as that length is in.
  std::string huge("\x16\x03\x01\x00\x04\x01\x00\x48\x00", 9);
  EXPECT_EQ(parse(huge).status, Status::Invalid);
  EXPECT_EQ(parse(huge, 8).status, Status::Incomplete);
}

TEST(ClientHello, FindsTheAlpnProtocolsOffered) {
  const std::string hello =
      opensslHello("grpc.example", TLS1_3_VERSION, std::string("\x02h2\x08http/1.1", 12));
  const ClientHelloParse p = parse(hello);
  ASSERT_EQ(p.status, Status::Done);
  EXPECT_EQ(p.serverName, "grpc.example");
  EXPECT_EQ(p.alpn, (std::vector<std::string>{"h2", "http/1.1"}));
  EXPECT_TRUE(parse(opensslHello("grpc.example")).alpn.empty());
  // ACME's TLS-ALPN-01 challenge (RFC 8737) without a name.
  const ClientHelloParse acme = parse(opensslHello(nullptr, TLS1_3_VERSION,
                                                   std::string("\x0a"
                                                               "acme-tls/1",
                                                               11)));
  ASSERT_EQ(acme.status, Status::Done);
  EXPECT_EQ(acme.alpn, (std::vector<std::string>{"acme-tls/1"}));
}

TEST(ClientHello, MalformedAlpnIsInvalid) {
  auto alpn = [](const std::string& data) { return std::pair<uint16_t, std::string>{16, data}; };
  const std::string good = std::string("\x00\x03\x02h2", 5);
  EXPECT_EQ(parse(helloRecord(Extensions{sni("a.example"), alpn(good)})).status, Status::Done);
  for (const std::string& bad : {std::string("\x00\x00", 2), std::string("\x00\x01\x00", 3),
                                 std::string("\x00\x04\x02h2", 5), std::string("\x00\x03\x03h2", 5),
                                 std::string("\x00\x04\x02h2\x00", 6), std::string("\x00", 1)}) {
    EXPECT_EQ(parse(helloRecord(Extensions{alpn(bad)})).status, Status::Invalid)
        << testing::PrintToString(bad);
  }
  EXPECT_EQ(parse(helloRecord(Extensions{alpn(good), alpn(good)})).status, Status::Invalid);
}

}  // namespace
}  // namespace grelay::proxy
