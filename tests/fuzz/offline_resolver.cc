// Linked into the config fuzz targets: getaddrinfo() without the network. Host names in
// fuzz inputs would otherwise become DNS queries (slow, flaky, and a fuzzer that waits on
// the resolver reports timeouts instead of bugs). Numeric hosts resolve as usual; the name
// "localhost" resolves to 127.0.0.1 / ::1 (as in /etc/hosts); every other name fails with
// EAI_NONAME, which the loader reports like an unknown host. The executable's definition
// takes precedence over libc's (and over a sanitizer's interceptor, which is weak).
#include <dlfcn.h>
#include <netdb.h>

#include <cstring>
#include <string>

namespace {

using GetAddrInfo = int (*)(const char*, const char*, const addrinfo*, addrinfo**);

GetAddrInfo realGetAddrInfo() {
  static GetAddrInfo real = reinterpret_cast<GetAddrInfo>(dlsym(RTLD_NEXT, "getaddrinfo"));
  return real;
}

}  // namespace

extern "C" int getaddrinfo(const char* node, const char* service, const addrinfo* hints,
                           addrinfo** res) {
  GetAddrInfo real = realGetAddrInfo();
  if (real == nullptr) {
    return EAI_SYSTEM;
  }
  addrinfo numeric{};
  if (hints != nullptr) {
    numeric = *hints;
  }
  numeric.ai_flags |= AI_NUMERICHOST;
  if (node != nullptr && std::strcmp(node, "localhost") == 0) {
    const char* loopback = numeric.ai_family == AF_INET6 ? "::1" : "127.0.0.1";
    return real(loopback, service, &numeric, res);
  }
  return real(node, service, &numeric, res);
}
