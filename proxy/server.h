// Runs grelay: binds the listeners, starts the admin endpoint and the workers, and waits
// for SIGTERM/SIGINT (stop accepting, drain up to server.drain_timeout, exit 0).
#pragma once

#include <string>

#include "config/config.h"
#include "relay/probe.h"

namespace grelay::proxy {

inline constexpr int kExitOk = 0;
inline constexpr int kExitConfig = 1;   // bad config, cannot bind, cannot start
inline constexpr int kExitNoUring = 2;  // io_uring unavailable (seccomp, sysctl, kernel)

int runServer(const config::Config& config, const relay::Features& features);

}  // namespace grelay::proxy
