"""Free TCP ports for tests: shared by the integration harness and the Docker tests."""

import random
import socket

_ports_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to right now, below the kernel's ephemeral range: a port the
    kernel picks could become the local port of some outgoing connection (the tests make
    thousands) before grelay binds it ("Address already in use"). Never the same twice in
    one test process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(10000, low) if low > 11000 else 0
        if port in _ports_given:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _ports_given.add(port)
        return port
    raise RuntimeError(f"no free port below {low} on {host}")
