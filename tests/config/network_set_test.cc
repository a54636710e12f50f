// NetworkSet's index answers exactly what a scan of its networks would.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/loader.h"

namespace grelay::config {
namespace {

sockaddr_storage peer(const char* text) {
  sockaddr_storage s{};
  if (inet_pton(AF_INET, text, &reinterpret_cast<sockaddr_in&>(s).sin_addr) == 1) {
    s.ss_family = AF_INET;
  } else {
    EXPECT_EQ(inet_pton(AF_INET6, text, &reinterpret_cast<sockaddr_in6&>(s).sin6_addr), 1) << text;
    s.ss_family = AF_INET6;
  }
  return s;
}

Network net(const char* text) {
  auto n = parseNetwork(text);
  EXPECT_TRUE(n.has_value()) << text;
  return *n;
}

bool scan(const NetworkSet& set, const sockaddr_storage& address) {
  for (const Network& n : set) {
    if (n.contains(address)) {
      return true;
    }
  }
  return false;
}

TEST(NetworkSetTest, MatchesByFamilyAndMergesWhatOverlaps) {
  const NetworkSet set{net("10.0.0.0/8"), net("10.1.0.0/16"),   net("11.0.0.0/8"),
                       net("192.0.2.7"),  net("2001:db8::/32"), net("2001:db8:1::/48"),
                       net("::1")};
  EXPECT_EQ(set.size(), 7u);             // as written
  EXPECT_EQ(set.rangeCount(), 2u + 2u);  // 10/8 + 11/8 touch; 2001:db8:1::/48 inside /32
  for (const char* in : {"10.0.0.0", "10.255.255.255", "11.3.4.5", "192.0.2.7", "::ffff:10.9.9.9",
                         "2001:db8::1", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "::1"}) {
    EXPECT_TRUE(set.contains(peer(in))) << in;
  }
  for (const char* out : {"9.255.255.255", "12.0.0.0", "192.0.2.6", "192.0.2.8", "::2",
                          "2001:db9::", "::ffff:12.0.0.1", "::a00:1"}) {
    EXPECT_FALSE(set.contains(peer(out))) << out;
  }
  // An IPv6 network does not hold IPv4 clients, even one covering the mapped range.
  const NetworkSet all6{net("::/0")};
  EXPECT_TRUE(all6.contains(peer("fe80::1")));
  EXPECT_FALSE(all6.contains(peer("10.0.0.1")));
  EXPECT_FALSE(all6.contains(peer("::ffff:10.0.0.1")));
  const NetworkSet all4{net("0.0.0.0/0")};
  EXPECT_TRUE(all4.contains(peer("255.255.255.255")));
  EXPECT_TRUE(all4.contains(peer("::ffff:0.0.0.0")));
  EXPECT_FALSE(all4.contains(peer("::")));
  EXPECT_TRUE(admits(NetworkSet{}, peer("1.2.3.4")));  // no list: everyone
  EXPECT_FALSE(admits(NetworkSet{net("::1")}, peer("1.2.3.4")));
}

TEST(NetworkSetTest, AgreesWithAScanOverRandomNetworksAndAddresses) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<Network> list;
    const int count = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < count; ++i) {
      Network n;
      n.family = rng() % 2 ? AF_INET : AF_INET6;
      const uint32_t bits = n.family == AF_INET ? 32 : 128;
      n.prefix = static_cast<uint32_t>(rng() % (bits + 1));
      // Few distinct leading bytes, so that networks overlap, nest and touch.
      for (uint32_t b = 0; b < bits / 8; ++b) {
        n.bytes[b] = static_cast<uint8_t>(b < 2 ? rng() % 3 : rng());
      }
      for (uint32_t b = 0; b < bits / 8; ++b) {  // host bits 0, as parseNetwork leaves them
        const uint32_t keep = n.prefix > b * 8 ? std::min<uint32_t>(8, n.prefix - b * 8) : 0;
        n.bytes[b] &= static_cast<uint8_t>(keep == 0 ? 0 : 0xff << (8 - keep));
      }
      list.push_back(n);
    }
    const NetworkSet set(list);
    for (int probe = 0; probe < 500; ++probe) {
      sockaddr_storage s{};
      const int kind = static_cast<int>(rng() % 3);
      if (kind == 0) {
        auto& in = reinterpret_cast<sockaddr_in&>(s);
        s.ss_family = AF_INET;
        uint8_t* b = reinterpret_cast<uint8_t*>(&in.sin_addr.s_addr);
        for (int i = 0; i < 4; ++i) {
          b[i] = static_cast<uint8_t>(i < 2 ? rng() % 3 : rng());
        }
      } else {
        auto& in6 = reinterpret_cast<sockaddr_in6&>(s);
        s.ss_family = AF_INET6;
        for (int i = 0; i < 16; ++i) {
          in6.sin6_addr.s6_addr[i] = static_cast<uint8_t>(i < 2 ? rng() % 3 : rng());
        }
        if (kind == 2) {  // an IPv4 client of a dual-stack listener
          std::memset(in6.sin6_addr.s6_addr, 0, 10);
          in6.sin6_addr.s6_addr[10] = in6.sin6_addr.s6_addr[11] = 0xff;
          in6.sin6_addr.s6_addr[12] = static_cast<uint8_t>(rng() % 3);
        }
      }
      ASSERT_EQ(set.contains(s), scan(set, s)) << "round " << round << " probe " << probe;
    }
  }
}

}  // namespace
}  // namespace grelay::config
