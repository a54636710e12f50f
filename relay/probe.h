// Startup feature probe: what the running kernel's io_uring offers, and which relay path
// `relay_path = "auto"` picks. Reported by `grelay --features` and as metrics.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "config/config.h"

namespace grelay::relay {

struct Features {
  bool uringAvailable = false;
  int setupError = 0;          // -errno from io_uring_setup when unavailable
  std::string unavailableWhy;  // what happened and what to do, for the user
  uint32_t featureBits = 0;    // io_uring_params.features
  std::string kernelRelease;

  bool providedBufferRings = false;
  bool multishotAccept = false;
  bool multishotRecv = false;
  bool sendZc = false;
  bool bundles = false;
  bool sqeGroups = false;
  bool groupKernelBuffers = false;
  bool ktls = false;    // the kernel's "tls" TCP ULP can be attached
  bool splice = false;  // non-blocking splice(2) socket -> pipe -> socket works

  bool pathAvailable(config::RelayPath path) const;
  // Why `path` cannot be used here ("" when it can).
  std::string pathMissing(config::RelayPath path) const;
  // The path "auto" resolves to (group > mainline > copy).
  config::RelayPath autoPath() const;
};

// Probes the running kernel. Cheap (a few ms); safe to call once at startup.
Features probeFeatures();

// Explains an io_uring_setup failure: EPERM (seccomp, kernel.io_uring_disabled), ENOSYS...
std::string explainSetupError(int err);

void printFeatures(const Features& features, std::ostream& out);

}  // namespace grelay::relay
