// Runs grelay: binds the listeners, starts the admin endpoint and the workers, and waits
// for signals:
//  - SIGTERM/SIGINT: stop accepting, drain up to server.drain_timeout, reset what is
//    left, exit 0 (a second signal resets at once);
//  - SIGHUP: reload. The file is loaded and validated again (TLS certificates included);
//    on any error the running configuration stays and the errors are logged. Otherwise a
//    new generation of workers starts with the new configuration, taking over the
//    listening sockets of unchanged addresses (no connection is refused or lost), and the
//    old generation stops accepting and finishes its open sessions, however long they
//    take. Counters continue across generations (metrics are summed by name).
#pragma once

#include "config/config.h"
#include "relay/probe.h"

namespace grelay::proxy {

inline constexpr int kExitOk = 0;
inline constexpr int kExitConfig = 1;   // bad config, cannot bind, cannot start
inline constexpr int kExitNoUring = 2;  // io_uring unavailable (seccomp, sysctl, kernel)

int runServer(config::Config config, const relay::Features& features);

}  // namespace grelay::proxy
