#include "proxy/client_hello.h"

#include <algorithm>
#include <string>
#include <utility>

namespace grelay::proxy {
namespace {

// TLS records (RFC 8446 5.1): type(1) version(2) length(2), then at most 2^14 bytes of a
// plaintext fragment; a handshake message may span any number of them.
constexpr size_t kRecordHeader = 5;
constexpr uint8_t kContentHandshake = 22;
constexpr uint8_t kRecordMajor = 3;
constexpr size_t kMaxRecord = 16384;

// A handshake message: msg_type(1) length(3), then the body (RFC 8446 4).
constexpr size_t kHandshakeHeader = 4;
constexpr uint8_t kClientHelloType = 1;
// legacy_version(2), random(32), then the shortest session_id (empty), cipher_suites (one)
// and compression_methods (one): no ClientHello body is shorter, so a message whose length
// is not yet known needs at least this many bytes after its header.
constexpr size_t kMinClientHelloBody = 2 + 32 + 1 + (2 + 2) + (1 + 1);
constexpr size_t kMaxSessionId = 32;

// server_name (RFC 6066 3): a ServerNameList of name_type(1) length(2) name.
constexpr uint16_t kServerNameExtension = 0;
constexpr uint8_t kHostNameType = 0;
constexpr size_t kMaxHostName = 255;

// application_layer_protocol_negotiation (RFC 7301 3.1): a ProtocolNameList of
// length(1) name, each name 1..255 bytes.
constexpr uint16_t kAlpnExtension = 16;

enum class Step : uint8_t { Ok, Short, Bad };

// Reads a structure `end` bytes long of which only the first `avail` may be at hand yet: a
// field running past `end` is malformed (Bad) whatever comes next, one running past `avail`
// is only not there yet (Short). That split is what lets a malformed ClientHello be rejected
// as soon as its bad field arrives, and an Incomplete one never be rejected later for bytes
// it has already passed.
class Cursor {
public:
  Cursor(const uint8_t* data, size_t avail, size_t end)
      : data_(data), avail_(std::min(avail, end)), end_(end) {}

  bool atEnd() const { return pos_ == end_; }
  size_t left() const { return end_ - pos_; }

  Step bytes(size_t n, const uint8_t*& out) {
    if (n > end_ - pos_) {
      return Step::Bad;
    }
    if (n > avail_ - pos_) {
      return Step::Short;
    }
    out = data_ + pos_;
    pos_ += n;
    return Step::Ok;
  }
  Step skip(size_t n) {
    const uint8_t* ignored;
    return bytes(n, ignored);
  }
  Step u8(size_t& value) {
    const uint8_t* p;
    const Step step = bytes(1, p);
    if (step == Step::Ok) {
      value = p[0];
    }
    return step;
  }
  Step u16(size_t& value) {
    const uint8_t* p;
    const Step step = bytes(2, p);
    if (step == Step::Ok) {
      value = (size_t{p[0]} << 8) | p[1];
    }
    return step;
  }
  // The next `n` bytes (n <= left()) as a structure of their own; this cursor stays put.
  Cursor nested(size_t n) const { return Cursor(data_ + pos_, avail_ - pos_, n); }

private:
  const uint8_t* data_;
  size_t avail_;
  size_t end_;
  size_t pos_ = 0;
};

// Chains the reads of a parse: the first step that is not Ok is the parse's result.
#define GRELAY_TRY(expr)                                \
  do {                                                  \
    if (const Step step_ = (expr); step_ != Step::Ok) { \
      return step_;                                     \
    }                                                   \
  } while (0)

// The server_name extension's data: the first host_name it lists, if any, into `name`.
// Later entries are only checked to be well formed; an empty list is malformed, as servers
// (OpenSSL's among them) treat it.
Step parseServerName(Cursor in, std::string& name) {
  size_t listLength = 0;
  GRELAY_TRY(in.u16(listLength));
  if (listLength == 0 || listLength != in.left()) {
    return Step::Bad;
  }
  bool found = false;
  while (!in.atEnd()) {
    size_t type = 0;
    size_t length = 0;
    GRELAY_TRY(in.u8(type));
    GRELAY_TRY(in.u16(length));
    const bool take = type == kHostNameType && !found;
    // Checked before the name's bytes arrive: a 64 KiB "name" is rejected at its length.
    if (take && (length == 0 || length > kMaxHostName)) {
      return Step::Bad;
    }
    const uint8_t* bytes = nullptr;
    GRELAY_TRY(in.bytes(length, bytes));
    if (take) {
      name.assign(reinterpret_cast<const char*>(bytes), length);
      found = true;
    }
  }
  return Step::Ok;
}

// The ALPN extension's data: the protocols it lists, in order, into `protocols`.
Step parseAlpn(Cursor in, std::vector<std::string>& protocols) {
  size_t listLength = 0;
  GRELAY_TRY(in.u16(listLength));
  if (listLength < 2 || listLength != in.left()) {
    return Step::Bad;
  }
  std::vector<std::string> found;
  while (!in.atEnd()) {
    size_t length = 0;
    GRELAY_TRY(in.u8(length));
    if (length == 0) {
      return Step::Bad;
    }
    const uint8_t* bytes = nullptr;
    GRELAY_TRY(in.bytes(length, bytes));
    found.emplace_back(reinterpret_cast<const char*>(bytes), length);
  }
  protocols = std::move(found);
  return Step::Ok;
}

// The ClientHello's body (RFC 8446 4.1.2, which keeps TLS 1.2's layout): Ok once all of it
// is read and well formed, with the server name (if any) in `name` and the ALPN protocols
// offered (if any) in `protocols`.
Step parseClientHelloBody(Cursor in, std::string& name, std::vector<std::string>& protocols) {
  size_t length = 0;
  GRELAY_TRY(in.skip(2 + 32));  // legacy_version, random
  GRELAY_TRY(in.u8(length));
  if (length > kMaxSessionId) {
    return Step::Bad;
  }
  GRELAY_TRY(in.skip(length));
  GRELAY_TRY(in.u16(length));
  if (length < 2 || length % 2 != 0) {
    return Step::Bad;
  }
  GRELAY_TRY(in.skip(length));
  GRELAY_TRY(in.u8(length));
  if (length == 0) {
    return Step::Bad;
  }
  GRELAY_TRY(in.skip(length));
  if (in.atEnd()) {
    return Step::Ok;  // an SSLv3-era hello without extensions
  }
  GRELAY_TRY(in.u16(length));
  if (length != in.left()) {
    return Step::Bad;
  }
  bool seenServerName = false;
  bool seenAlpn = false;
  while (!in.atEnd()) {
    size_t type = 0;
    GRELAY_TRY(in.u16(type));
    GRELAY_TRY(in.u16(length));
    if (length > in.left()) {
      return Step::Bad;
    }
    if (type == kServerNameExtension) {
      // Two would leave the name ambiguous; TLS forbids repeating an extension.
      if (seenServerName) {
        return Step::Bad;
      }
      seenServerName = true;
      GRELAY_TRY(parseServerName(in.nested(length), name));
    } else if (type == kAlpnExtension) {
      if (seenAlpn) {
        return Step::Bad;
      }
      seenAlpn = true;
      GRELAY_TRY(parseAlpn(in.nested(length), protocols));
    }
    GRELAY_TRY(in.skip(length));
  }
  return Step::Ok;
}

#undef GRELAY_TRY

// The handshake bytes collected from the records: a view of the input while they come from
// one record (the usual case), a copy once a second record adds to them.
class MessageBytes {
public:
  explicit MessageBytes(const uint8_t* stream) : view_(stream) {}

  const uint8_t* data() const {
    return copied_ ? reinterpret_cast<const uint8_t*>(copy_.data()) : view_;
  }
  size_t size() const { return size_; }

  void append(const uint8_t* bytes, size_t n) {
    if (n == 0) {
      return;
    }
    if (size_ == 0) {
      view_ = bytes;
    } else {
      if (!copied_) {
        copy_.assign(reinterpret_cast<const char*>(view_), size_);
        copied_ = true;
      }
      copy_.append(reinterpret_cast<const char*>(bytes), n);
    }
    size_ += n;
  }

private:
  const uint8_t* view_;
  std::string copy_;
  bool copied_ = false;
  size_t size_ = 0;
};

// What the first `n` (< kRecordHeader) bytes of a record header already rule out: another
// content type, another major version, a length over 2^14 (its high byte alone says so).
bool recordHeaderPrefixFits(const uint8_t* header, size_t n) {
  return (n < 1 || header[0] == kContentHandshake) && (n < 2 || header[1] == kRecordMajor) &&
         (n < 4 || header[3] <= (kMaxRecord >> 8));
}

}  // namespace

ClientHelloParse parseClientHello(const uint8_t* data, size_t length) {
  ClientHelloParse result;  // Invalid
  MessageBytes message(data);
  size_t messageLength = 0;  // header included; 0 until the header is in
  size_t offset = 0;         // where the next record starts
  size_t need = 0;           // set when the input ends before the message does
  while (messageLength == 0 || message.size() < messageLength) {
    // The fewest message bytes still to come: its known length, or the shortest ClientHello.
    const size_t wanted =
        (messageLength != 0 ? messageLength : kHandshakeHeader + kMinClientHelloBody) -
        message.size();
    if (offset + kRecordHeader + wanted > kMaxClientHelloPeek) {
      return result;
    }
    if (length - offset < kRecordHeader) {
      if (!recordHeaderPrefixFits(data + offset, length - offset)) {
        return result;
      }
      need = offset + kRecordHeader;
      break;
    }
    const uint8_t* header = data + offset;
    const size_t recordLength = (size_t{header[3]} << 8) | header[4];
    if (header[0] != kContentHandshake || header[1] != kRecordMajor || recordLength == 0 ||
        recordLength > kMaxRecord) {
      return result;
    }
    const size_t start = offset + kRecordHeader;
    const size_t end = start + recordLength;
    const size_t before = message.size();
    message.append(data + start, std::min(end, length) - start);
    if (messageLength == 0 && message.size() >= 1 && message.data()[0] != kClientHelloType) {
      return result;
    }
    if (messageLength == 0 && message.size() >= kHandshakeHeader) {
      const uint8_t* h = message.data();
      messageLength = kHandshakeHeader + ((size_t{h[1]} << 16) | (size_t{h[2]} << 8) | h[3]);
    }
    if (messageLength != 0 && message.size() >= messageLength) {
      break;  // the rest of this record, and anything after it, is not the ClientHello's
    }
    // The earliest end of stream at which the message could be whole: inside this record,
    // or at least one more record header away.
    const size_t fromHere =
        (messageLength != 0 ? messageLength : kHandshakeHeader + kMinClientHelloBody) - before;
    const size_t earliest =
        fromHere <= recordLength ? start + fromHere : end + kRecordHeader + fromHere - recordLength;
    if (earliest > kMaxClientHelloPeek) {
      return result;
    }
    if (length < end) {
      need = std::min(end, earliest);
      break;
    }
    offset = end;
  }

  if (messageLength == 0) {
    // Not even the message's header yet, and nothing wrong so far.
    result.status = ClientHelloParse::Status::Incomplete;
    result.need = need;
    return result;
  }
  std::string name;
  std::vector<std::string> protocols;
  const Step step = parseClientHelloBody(
      Cursor(message.data() + kHandshakeHeader, message.size() - kHandshakeHeader,
             messageLength - kHandshakeHeader),
      name, protocols);
  if (step == Step::Ok) {
    result.status = ClientHelloParse::Status::Done;
    result.serverName = std::move(name);
    result.alpn = std::move(protocols);
  } else if (step == Step::Short && need != 0) {
    result.status = ClientHelloParse::Status::Incomplete;
    result.need = need;
  }
  return result;
}

}  // namespace grelay::proxy
