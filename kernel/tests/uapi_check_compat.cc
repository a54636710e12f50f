// SPDX-License-Identifier: GPL-2.0
// Checks that relay/uring_compat.h (what grelay is built against, on top of Debian's
// liburing 2.3 headers) and the patched kernel's exported uapi define the group uapi with
// the same values. Run by kernel/build.sh; a mismatch fails the build.
#include <cstdio>
#include <cstring>

#include "relay/uring_compat.h"

#include "kernel/tests/uapi_check.h"

namespace {

struct Compat {
  const char* name;
  unsigned long long value;
};

constexpr Compat kCompat[] = {
    {"IOSQE_GROUP_BIT", IOSQE_GROUP_BIT},
    {"IOSQE_GROUP", IOSQE_GROUP},
    {"IOSQE_GROUP_KBUF", IOSQE_GROUP_KBUF},
    {"IORING_RECV_GROUP_KBUF", IORING_RECV_GROUP_KBUF},
    {"IORING_GROUP_KBUF_MAX", IORING_GROUP_KBUF_MAX},
    {"IORING_FEAT_SQE_GROUP", IORING_FEAT_SQE_GROUP},
    {"IORING_FEAT_GROUP_KBUF", IORING_FEAT_GROUP_KBUF},
};

}  // namespace

int main() {
  int bad = 0;
  for (const Compat& c : kCompat) {
    const uapi_value* k = uapi_kernel;
    while (k->name != nullptr && std::strcmp(k->name, c.name) != 0) {
      ++k;
    }
    if (k->name == nullptr) {
      std::fprintf(stderr, "uapi_check: %s is not in the kernel's uapi\n", c.name);
      bad = 1;
    } else if (k->value != c.value) {
      std::fprintf(stderr, "uapi_check: %s: relay/uring_compat.h has %#llx, kernel has %#llx\n",
                   c.name, c.value, k->value);
      bad = 1;
    }
  }
  return bad;
}
