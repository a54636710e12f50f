"""Integration-test harness: drives the real grelay binary over real sockets.

Python 3 standard library only. Every tests/integration/test_*.py imports this module;
other suites (metrics, TLS, the kernel VM run) may too.

Environment:
  GRELAY_BIN         the binary under test (ctest passes $<TARGET_FILE:grelay>)
  GRELAY_RELAY_PATH  written into every generated config's [server].relay_path (default "auto")
  GRELAY_WORKERS     default [server].workers of generated configs (default 2)
  GRELAY_SPLICE      "true"/"false": written into every generated config's [server].splice
                     (unset: grelay's default, true); "false" keeps single-target
                     directions on RECV/SEND
  GRELAY_TEST_SCALE  multiplies data sizes (default 1; e.g. 0.25 for a slow VM); tests
                     keep their assertions, only volumes shrink
  GRELAY_NO_URING    the no_uring seccomp helper (ctest passes $<TARGET_FILE:no_uring>)

Pieces:
  Config             builder for grelay TOML configs (listener ports picked automatically)
  Grelay             runs the binary on a config, waits for its listeners, stop(), log(), rss_kb()
  Stream, Checker    deterministic per-seed byte streams and their incremental verifier
  stream_session()   one client session: send while reading, half-close, verify what came back
  run_concurrently() N calls in threads, results in order
  slow_reader()      a client that reads a little every few ms
  EchoServer, SinkServer, FloodServer, ResetServer, StallServer, RefusingPort, Blackhole
  NginxServer, run_wrk()
  TLS: Certs (CA, server, expired, self-signed, wrong-host certificates made with the
       openssl CLI), tls_client_context(), tls_server_context(), tls_stream_session()
       (stream_session over TLS, close_notify half-close), TlsEchoServer (records SNI),
       tap_session_flags() (SessionOpen flags of .gtap files), tshark_follow()
  GrelayTest         unittest.TestCase that prints grelay's log when a test fails
  main()             runs a test module: exit 0 pass, 77 all skipped, 1 failure
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import pwd
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SKIP = 77


# ----------------------------------------------------------------------------------------
# Environment


def _find_binary() -> str:
    env = os.environ.get("GRELAY_BIN")
    if env:
        return env
    for d in ("build", "build-release", "build-debug"):
        p = os.path.join(REPO, d, "proxy", "grelay")
        if os.access(p, os.X_OK):
            return p
    return ""


GRELAY_BIN = _find_binary()
RELAY_PATH = os.environ.get("GRELAY_RELAY_PATH", "auto")
WORKERS = int(os.environ.get("GRELAY_WORKERS", "2"))
SPLICE = os.environ.get("GRELAY_SPLICE", "")


def _sanitized(path: str) -> bool:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b"__asan_init") >= 0
    except (OSError, ValueError):
        return False


SANITIZED = _sanitized(GRELAY_BIN) if GRELAY_BIN else False
SCALE = float(os.environ.get("GRELAY_TEST_SCALE", "1"))

KiB = 1024
MiB = 1024 * 1024


def scaled(n: float, minimum: int = 1) -> int:
    """n times GRELAY_TEST_SCALE, at least `minimum`."""
    return max(minimum, int(n * SCALE))


# Time limits that protect against hangs, not performance targets, stretch under
# emulation: the kernel/ VM runs on TCG, several times slower (vm.sh sets GRELAY_IN_VM).
TIME_SCALE = float(os.environ.get("GRELAY_TIME_SCALE",
                                  "5" if os.environ.get("GRELAY_IN_VM") else "1"))


def slack(seconds: float) -> float:
    """A time limit, stretched by GRELAY_TIME_SCALE (5 inside the VM)."""
    return seconds * TIME_SCALE


from free_ports import free_port  # noqa: E402,F401 (tests call h.free_port)


def uring_status() -> tuple[bool, str]:
    """(available, `grelay --features` output) for the binary under test."""
    try:
        out = subprocess.run([GRELAY_BIN, "--features"], capture_output=True, text=True,
                             timeout=30)
    except OSError as e:
        return False, str(e)
    text = out.stdout + out.stderr
    return "io_uring: available" in text, text


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------
# Deterministic byte streams

_BLOCK = 8192
_POOL_SIZE = 1 << 20
# One random pool (random.Random(seed).randbytes, generated once: ~20 ms); every stream
# is cut from it at seed-dependent, block-dependent offsets, each block starting with a
# (seed, block index) header. randbytes() itself runs at ~50 MB/s on the test machines,
# too slow for gigabytes; this gives unique, order-sensitive content at memcpy speed.
_POOL = memoryview(random.Random(0x6772656C6179).randbytes(_POOL_SIZE + _BLOCK))
_HEADER = struct.Struct("<QQ")


class Stream:
    """`length` pseudo-random bytes determined by `seed`, readable at any offset."""

    def __init__(self, seed: int, length: int):
        self.seed = seed
        self.length = length

    def _block(self, k: int) -> bytes:
        start = (self.seed * 2654435761 + k * 40503) % _POOL_SIZE
        return _HEADER.pack(self.seed, k) + _POOL[start:start + _BLOCK - _HEADER.size]

    def read(self, offset: int, n: int) -> bytes:
        end = min(self.length, offset + n)
        if offset >= end:
            return b""
        k0, k1 = offset // _BLOCK, (end - 1) // _BLOCK
        data = b"".join(self._block(k) for k in range(k0, k1 + 1))
        base = k0 * _BLOCK
        return data[offset - base:end - base]

    def chunks(self, size: int = 256 * KiB):
        off = 0
        while off < self.length:
            piece = self.read(off, size)
            off += len(piece)
            yield piece

    def bytes(self) -> bytes:
        return self.read(0, self.length)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"Stream(seed={self.seed}, length={self.length})"


def as_stream(data) -> "Stream | _BytesStream":
    if isinstance(data, (Stream, _BytesStream)):
        return data
    return _BytesStream(bytes(data))


class _BytesStream:
    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self.data[offset:offset + n]

    def chunks(self, size: int = 256 * KiB):
        for off in range(0, self.length, size):
            yield self.data[off:off + size]

    def bytes(self) -> bytes:
        return self.data

    def __len__(self) -> int:
        return self.length


class Checker:
    """Compares bytes fed in order against an expected stream; remembers the first mismatch."""

    def __init__(self, expected):
        self.expected = as_stream(expected)
        self.offset = 0
        self.mismatch: int | None = None

    def feed(self, data) -> None:
        if self.mismatch is None:
            want = self.expected.read(self.offset, len(data))
            if want != data:
                n = min(len(want), len(data))
                i = 0
                if n:
                    mv_a, mv_b = memoryview(want), memoryview(data)
                    lo, hi = 0, n  # binary search for the first differing byte
                    while hi - lo > 4096:
                        mid = (lo + hi) // 2
                        if mv_a[lo:mid] == mv_b[lo:mid]:
                            lo = mid
                        else:
                            hi = mid
                    i = lo
                    while i < n and want[i] == data[i]:
                        i += 1
                self.mismatch = self.offset + i
        self.offset += len(data)

    @property
    def complete(self) -> bool:
        return self.mismatch is None and self.offset == len(self.expected)

    def describe(self) -> str:
        if self.mismatch is not None:
            return (f"bytes differ from offset {self.mismatch} (got {self.offset} bytes, "
                    f"expected {len(self.expected)})")
        if self.offset != len(self.expected):
            return f"got {self.offset} bytes, expected {len(self.expected)}"
        return "ok"


# ----------------------------------------------------------------------------------------
# grelay config and process


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # A TOML basic string: quotes, backslashes and control characters escaped.
        return '"' + "".join(c if c >= " " and c not in '"\\\x7f' else f"\\u{ord(c):04x}"
                             for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {v!r}")


class Config:
    """Builds a grelay TOML config.

        cfg = Config(buffer_pool="8MiB")                # [server] keys
        cfg.upstream("app", [echo.address])
        port = cfg.listener("web", "app", idle_timeout="1s",
                            mirrors=[{"name": "m1", "address": sink.address}])
        text = cfg.render()

    [server].relay_path defaults to GRELAY_RELAY_PATH and workers to GRELAY_WORKERS.
    """

    def __init__(self, **server):
        self.server = {"workers": WORKERS, "relay_path": RELAY_PATH}
        if SPLICE:
            self.server["splice"] = SPLICE == "true"
        self.server.update(server)
        self.admin: dict | None = None
        self.upstreams: dict[str, dict] = {}
        self.listeners: list[dict] = []
        self.ports: dict[str, int] = {}

    def upstream(self, name: str, servers, **kw) -> "Config":
        self.upstreams[name] = {"servers": list(servers), **kw}
        return self

    def listener(self, name: str, upstream: str, *, port: int | None = None,
                 host: str = "127.0.0.1", mirrors=(), tap: dict | None = None, **kw) -> int:
        port = port or free_port(host)
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        entry = {"name": name, "listen": listen, "upstream": upstream, **kw}
        self.listeners.append({"keys": entry, "mirrors": list(mirrors), "tap": tap})
        self.ports[name] = port
        return port

    def with_admin(self, port: int | None = None) -> int:
        port = port or free_port()
        self.admin = {"listen": f"127.0.0.1:{port}"}
        return port

    def listen_addresses(self) -> list[tuple[str, int]]:
        out = [("127.0.0.1", p) for p in self.ports.values()]
        if self.admin:
            host, port = self.admin["listen"].rsplit(":", 1)
            out.append((host, int(port)))
        return out

    def render(self) -> str:
        lines = ["[server]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.server.items()]
        if self.admin:
            lines += ["", "[admin]"] + [f"{k} = {_toml_value(v)}" for k, v in self.admin.items()]
        for name, u in self.upstreams.items():
            lines += ["", f"[upstream.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in u.items()]
        for lst in self.listeners:
            lines += ["", "[[listener]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in lst["keys"].items()]
            for m in lst["mirrors"]:
                lines += ["", "  [[listener.mirror]]"]
                lines += [f"  {k} = {_toml_value(v)}" for k, v in m.items()]
            if lst["tap"]:
                lines += ["", "  [listener.tap]"]
                lines += [f"  {k} = {_toml_value(v)}" for k, v in lst["tap"].items()]
        return "\n".join(lines) + "\n"


_LISTEN_RE = re.compile(r'^\s*listen\s*=\s*"\[?([^"\]]*?)\]?:(\d+)"', re.M)


def inject_server_defaults(text: str) -> str:
    """Adds relay_path (GRELAY_RELAY_PATH) to a hand-written config's [server] table."""
    if re.search(r"^\s*relay_path\s*=", text, re.M):
        return text
    line = f'relay_path = "{RELAY_PATH}"'
    if SPLICE and not re.search(r"^\s*splice\s*=", text, re.M):
        line += f"\nsplice = {SPLICE}"
    m = re.search(r"^\[server\][^\n]*\n", text, re.M)
    if m:
        return text[:m.end()] + line + "\n" + text[m.end():]
    return f"[server]\n{line}\n\n" + text


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    cols = row.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except OSError:
            pass
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


_SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "UndefinedBehaviorSanitizer", "ThreadSanitizer")


class GrelayError(AssertionError):
    pass


class Grelay:
    """grelay running on a config. Context manager: starts, waits for every listener
    (and the admin port) to be listening, and on exit stops it with SIGTERM, asserting
    exit code 0 and a log free of sanitizer reports.

        with Grelay(cfg) as g:
            ...  g.port("web"), g.log(), g.rss_kb()
    """

    instances: list["Grelay"] = []  # every instance of this process, for failure reports

    def __init__(self, config, *, args=(), env=None, ready_timeout: float = 15.0,
                 expect_exit: int | None = 0, preexec_fn=None, wrapper=()):
        self.dir = tempfile.mkdtemp(prefix="grelay-it-")
        self.admin_port: int | None = None
        if isinstance(config, Config):
            self.text = config.render()
            self.addresses = config.listen_addresses()
            self.ports = dict(config.ports)
            if config.admin:
                self.admin_port = int(config.admin["listen"].rsplit(":", 1)[1])
        else:
            self.text = inject_server_defaults(config)
            self.addresses = [(h, int(p)) for h, p in _LISTEN_RE.findall(self.text)]
            self.ports = {}
        self.config_path = os.path.join(self.dir, "grelay.toml")
        with open(self.config_path, "w") as f:
            f.write(self.text)
        self.log_path = os.path.join(self.dir, "grelay.log")
        self.args = list(args)
        self.env = env
        self.ready_timeout = ready_timeout
        self.expect_exit = expect_exit
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. setrlimit)
        self.wrapper = list(wrapper)  # a command grelay runs under (e.g. the no_uring helper)
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.signals_sent: list = []
        Grelay.instances.append(self)

    # -- lifecycle

    def start(self, wait: bool = True) -> "Grelay":
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if self.env:
            env.update(self.env)
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*self.wrapper, GRELAY_BIN, "-c", self.config_path,
                                      *self.args],
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                     preexec_fn=self.preexec_fn)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.exit_code = code
                raise GrelayError(f"grelay exited with {code} before listening\n" + self.log_tail())
            mine = _socket_inodes(self.proc.pid)
            if all(_listening_inodes(port) & mine for _, port in self.addresses) and \
                    self._metrics_served():
                return
            if time.monotonic() > deadline:
                raise GrelayError(f"grelay not listening on {self.addresses} after "
                                  f"{self.ready_timeout}s\n" + self.log_tail())
            time.sleep(0.02)

    def _metrics_served(self) -> bool:
        """No admin port, or its /metrics answers (the port listens a moment before it
        does: grelay says 503 meanwhile)."""
        if self.admin_port is None:
            return True
        try:
            scrape_metrics(self.admin_port, timeout=2.0)
            return True
        except (urllib.error.URLError, OSError):
            return False

    def __enter__(self) -> "Grelay":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.proc is None:
            return
        if exc_type is not None:
            # A test is failing: kill (GrelayTest prints the log).
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._close()
            return
        if self.proc.poll() is None:
            self.stop(expect=self.expect_exit)
        else:
            self._finish(self.proc.returncode, self.expect_exit)

    def send_signal(self, sig=signal.SIGTERM) -> None:
        self.signals_sent.append(sig)
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.exit_code = code
        return code

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0, expect: int | None = 0) -> int:
        """Sends `sig`, waits for the exit; asserts the exit code (unless expect=None)."""
        if self.proc.poll() is None:
            self.send_signal(sig)
        code = self.wait_exit(timeout)
        if code is None:
            self.proc.kill()
            self.proc.wait()
            self._close()
            raise GrelayError(f"grelay still running {timeout}s after signal {sig}\n"
                              + self.log_tail())
        self._finish(code, expect)
        return code

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _finish(self, code: int, expect: int | None) -> None:
        self.exit_code = code
        self._close()
        self.check_sanitizers()
        if expect is not None and code != expect:
            raise GrelayError(f"grelay exited with {code}, expected {expect}\n" + self.log_tail())

    def _close(self) -> None:
        f = getattr(self, "_logf", None)
        if f and not f.closed:
            f.close()

    def check_sanitizers(self) -> None:
        text = self.log()
        for mark in _SANITIZER_MARKS:
            if mark in text:
                raise GrelayError(f"sanitizer report in grelay's log ({mark!r})\n" + text[-20000:])

    # -- inspection

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def port(self, listener: str) -> int:
        return self.ports[listener]

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise GrelayError("no VmRSS")

    def metrics(self) -> dict:
        """GET /metrics on the admin port: {(name, ((label, value), ...)): value}."""
        if self.admin_port is None:
            raise GrelayError("this grelay has no [admin] listener (Config.with_admin())")
        return parse_metrics(scrape_metrics(self.admin_port))

    def metric(self, name: str, **labels) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 if none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items()
                   if n == name and want <= set(ls))

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = self.log().splitlines()
        note = ""
        if not self.signals_sent and any(re.search(r"\b(SIGTERM|SIGINT):", l) for l in text):
            note = ("NOTE: grelay logged a SIGTERM/SIGINT this test never sent: another "
                    "process on this machine signalled it (a stale pid?)\n")
        return f"--- grelay log, last {min(lines, len(text))} of {len(text)} lines " \
               f"({self.log_path}) ---\n" + note + "\n".join(text[-lines:])

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def no_uring_helper() -> str:
    """Path of the no_uring seccomp wrapper: GRELAY_NO_URING, else built from
    no_uring.c with cc into a temp dir ('' if that fails)."""
    env = os.environ.get("GRELAY_NO_URING")
    if env:
        return env
    out = os.path.join(tempfile.mkdtemp(prefix="grelay-no-uring-"), "no_uring")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return ""
    r = subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "no_uring.c")],
                       capture_output=True, text=True)
    return out if r.returncode == 0 else ""


def read_json_lines(path: str) -> list:
    """The complete lines of a JSON-lines file (an access log) so far, parsed; [] if the
    file is not there yet. A line still being written is left for the next read."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def scrape_metrics(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict:
    """Prometheus text format -> {(name, ((label, value), ...sorted)): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = tuple(sorted(_LABEL_RE.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def run_grelay(args, *, timeout: float = 30.0, env=None, wrapper=()) -> subprocess.CompletedProcess:
    """Runs the binary to completion (CLI modes: --check, --features, ...)."""
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
    if env:
        e.update(env)
    return subprocess.run([*wrapper, GRELAY_BIN, *args], capture_output=True, text=True,
                          timeout=timeout, env=e)


# ----------------------------------------------------------------------------------------
# Clients


@dataclasses.dataclass
class SessionResult:
    sent: int = 0                 # bytes the client sent
    received: int = 0             # bytes the client read
    data: bytes | None = None     # what came back (keep=True)
    ok: bool = False              # expected bytes came back exactly and the stream ended cleanly
    check: str = ""               # Checker.describe() of what came back
    end: str = ""                 # how the read side ended: eof | reset | timeout | error: ...
    send_error: str | None = None
    connect_error: str | None = None
    local_port: int = 0
    elapsed: float = 0.0          # connect to end of stream
    index: int = -1

    def __str__(self) -> str:
        return (f"session {self.index} (client port {self.local_port}): sent {self.sent}, "
                f"received {self.received}, {self.check}, end={self.end}, "
                f"send_error={self.send_error}, connect_error={self.connect_error}, "
                f"{self.elapsed:.2f}s")


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_end(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, socket.timeout):
        return "timeout"
    return f"error: {exc!r}"


def stream_session(port: int, data=b"", *, expect="echo", keep: bool = False,
                   half_close: bool = True, chunk: int = 256 * KiB, timeout: float = 60.0,
                   host: str = "127.0.0.1", send_pause: float = 0.0, index: int = -1,
                   linger_reset: bool = False, on_connect=None) -> SessionResult:
    """One client session through grelay.

    Sends `data` (bytes or Stream) while reading concurrently; after the last byte,
    shuts down writing (half_close) and reads until EOF, reset or `timeout` seconds of
    silence. `expect` is what should come back: "echo" (the same bytes), None (nothing
    is checked), or bytes/Stream. on_connect(socket) runs once connected, before any byte
    is sent (e.g. a barrier). Returns a SessionResult; ok means exactly the expected
    bytes came back and the stream ended with EOF.
    """
    res = SessionResult(index=index)
    src = as_stream(data)
    exp = src if expect == "echo" else expect
    checker = Checker(exp) if exp is not None else None
    kept = bytearray() if keep else None
    t0 = time.monotonic()
    try:
        s = connect(port, host, timeout)
    except OSError as e:
        # On loopback grelay can reset an accepted connection before connect() returns.
        res.connect_error = repr(e)
        res.end = "reset" if isinstance(e, ConnectionResetError) else "connect failed"
        res.elapsed = time.monotonic() - t0
        res.check = "not connected"
        return res
    res.local_port = s.getsockname()[1]
    s.settimeout(timeout)
    if on_connect:
        on_connect(s)

    def sender():
        try:
            for piece in src.chunks(chunk):
                s.sendall(piece)
                res.sent += len(piece)
                if send_pause:
                    time.sleep(send_pause)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError as e:
            res.send_error = repr(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    buf = bytearray(256 * KiB)
    view = memoryview(buf)
    try:
        while True:
            n = s.recv_into(buf)
            if n == 0:
                res.end = "eof"
                break
            piece = view[:n]
            res.received += n
            if checker:
                checker.feed(piece)
            if kept is not None:
                kept += piece
    except OSError as e:
        res.end = _read_end(e)
    t.join(timeout)
    if res.end == "eof" and res.send_error and "ConnectionResetError" in res.send_error:
        # The kernel reports a reset once: the sender consumed it, the reader saw a
        # closed socket.
        res.end = "reset"
    if linger_reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    res.elapsed = time.monotonic() - t0
    if kept is not None:
        res.data = bytes(kept)
    if checker:
        res.check = checker.describe()
        res.ok = checker.complete and res.end == "eof" and res.send_error is None \
            and res.sent == len(src)
    else:
        res.check = "unchecked"
        res.ok = res.end == "eof" and res.send_error is None and res.sent == len(src)
    return res


def run_concurrently(fn, args_list, *, kwargs_list=None, start_gap: float = 0.0):
    """Calls fn(*args) for each entry, each in its own thread; returns results in order.
    An exception in a call is returned in its slot."""
    results = [None] * len(args_list)
    kwargs_list = kwargs_list or [{}] * len(args_list)

    def run(i):
        try:
            results[i] = fn(*args_list[i], **kwargs_list[i])
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            results[i] = e

    threads = []
    for i in range(len(args_list)):
        t = threading.Thread(target=run, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        if start_gap:
            time.sleep(start_gap)
    for t in threads:
        t.join()
    return results


@dataclasses.dataclass
class SlowReadResult:
    received: int = 0
    check: str = ""
    ok_prefix: bool = False   # every byte read matches the expected stream's prefix
    end: str = ""
    samples: list = dataclasses.field(default_factory=list)  # on_tick() return values


def slow_reader(port: int, *, read_size: int = 64 * KiB, interval: float = 0.005,
                duration: float = 3.0, expect=None, on_tick=None, tick_every: float = 0.1,
                rcvbuf: int | None = None, host: str = "127.0.0.1") -> SlowReadResult:
    """Connects, then reads at most `read_size` bytes every `interval` seconds for
    `duration` seconds (checking them against `expect`'s prefix), calling on_tick()
    every `tick_every` seconds. Closes with a reset at the end."""
    res = SlowReadResult()
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((host, port))
    checker = Checker(expect) if expect is not None else None
    t_end = time.monotonic() + duration
    next_tick = 0.0
    try:
        while time.monotonic() < t_end:
            now = time.monotonic()
            if on_tick and now >= next_tick:
                res.samples.append(on_tick())
                next_tick = now + tick_every
            data = s.recv(read_size)
            if not data:
                res.end = "eof"
                break
            res.received += len(data)
            if checker:
                checker.feed(data)
            time.sleep(interval)
        else:
            res.end = "duration"
    except OSError as e:
        res.end = _read_end(e)
    if on_tick:
        res.samples.append(on_tick())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    if checker:
        res.ok_prefix = checker.mismatch is None
        res.check = "prefix ok" if res.ok_prefix else checker.describe()
    return res


def wait_for(pred, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def try_request(port: int, payload: bytes = b"", timeout: float = 5.0,
                host: str = "127.0.0.1") -> tuple[str, bytes, float]:
    """Connects, sends `payload`, reads until the connection ends: (outcome, bytes
    read, seconds taken). outcome: eof | reset | timeout | refused | error: ... A reset
    during connect() (grelay closing an accepted connection at once) counts as reset."""
    t0 = time.monotonic()
    try:
        s = connect(port, host, timeout)
    except ConnectionRefusedError:
        return "refused", b"", time.monotonic() - t0
    except ConnectionResetError:
        return "reset", b"", time.monotonic() - t0
    with s:
        try:
            if payload:
                s.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            pass
        end, data = read_outcome(s, timeout)
    return end, data, time.monotonic() - t0


def read_outcome(s: socket.socket, timeout: float) -> tuple[str, bytes]:
    """Reads until EOF/reset/timeout: ("eof"|"reset"|"timeout"|"error: ...", bytes read)."""
    s.settimeout(timeout)
    got = bytearray()
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return "eof", bytes(got)
            got += d
    except OSError as e:
        return _read_end(e), bytes(got)


# ----------------------------------------------------------------------------------------
# Servers


@dataclasses.dataclass
class ConnRecord:
    """One connection a server accepted, in arrival order."""
    index: int
    peer: tuple
    opened: float
    received: int = 0
    sent: int = 0
    data: bytearray | None = None  # keep="bytes"
    sha256: str | None = None      # keep="sha256", set when the connection ended
    end: str | None = None         # eof | reset | error: ... | stopped; None while open
    closed: float | None = None
    _hash: object = None

    @property
    def done(self) -> bool:
        return self.end is not None

    def digest(self) -> tuple[int, str]:
        return self.received, self.sha256 or hashlib.sha256(self.data or b"").hexdigest()


class Server:
    """A TCP server on 127.0.0.1 with one thread per connection. Subclasses define
    handle(conn, record). Context manager; .address is "127.0.0.1:PORT". With
    `unix="PATH"` it listens on a Unix domain socket instead ("@NAME": the abstract
    namespace), and .address is grelay's "unix:PATH" ("unix:@NAME")."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, backlog: int = 1024,
                 rcvbuf: int | None = None, sndbuf: int | None = None, keep: str = "count",
                 unix: str | None = None):
        self.keep = keep
        self.unix = unix
        self.sock = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        if not unix:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if unix:
            self.sock.bind("\0" + unix[1:] if unix.startswith("@") else unix)
            self.host, self.port = None, None
            self.address = "unix:" + unix
        else:
            self.sock.bind((host, port))
            self.host, self.port = self.sock.getsockname()[:2]
            self.address = f"{self.host}:{self.port}"
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.conns: list[ConnRecord] = []
        self._open: dict[int, socket.socket] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self._stopping:
            try:
                c, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            c.settimeout(None)
            with self._cond:
                rec = ConnRecord(index=len(self.conns), peer=peer, opened=time.monotonic())
                if self.keep == "bytes":
                    rec.data = bytearray()
                elif self.keep == "sha256":
                    rec._hash = hashlib.sha256()
                self.conns.append(rec)
                self._open[rec.index] = c
                self._cond.notify_all()
            t = threading.Thread(target=self._run, args=(c, rec), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, c: socket.socket, rec: ConnRecord):
        try:
            self.handle(c, rec)
        except ConnectionResetError:
            self._end(rec, "reset")
        except OSError as e:
            self._end(rec, "stopped" if self._stopping else f"error: {e!r}")
        finally:
            if rec.end is None:
                self._end(rec, "closed")
            with self._cond:
                self._open.pop(rec.index, None)
            try:
                c.close()
            except OSError:
                pass

    def _record(self, rec: ConnRecord, data) -> None:
        rec.received += len(data)
        if rec.data is not None:
            rec.data += data
        elif rec._hash is not None:
            rec._hash.update(data)

    def _end(self, rec: ConnRecord, how: str) -> None:
        with self._cond:
            if rec.end is None:
                if rec._hash is not None:
                    rec.sha256 = rec._hash.hexdigest()
                rec.end = how
                rec.closed = time.monotonic()
                self._cond.notify_all()

    def _read_all(self, c: socket.socket, rec: ConnRecord) -> str:
        """Reads until EOF or reset, recording; returns 'eof' or 'reset'."""
        buf = bytearray(256 * KiB)
        view = memoryview(buf)
        while True:
            try:
                n = c.recv_into(buf)
            except ConnectionResetError:
                return "reset"
            if n == 0:
                return "eof"
            self._record(rec, view[:n])

    def handle(self, c: socket.socket, rec: ConnRecord) -> None:
        raise NotImplementedError

    def wait_connections(self, n: int, timeout: float = 30.0, ended: bool = True) -> bool:
        """Waits until at least `n` connections were accepted (and ended, by default)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                count = sum(1 for r in self.conns if r.done or not ended)
                if count >= n:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))

    def settle(self, quiet: float = 0.5, timeout: float = 30.0) -> None:
        """Waits until every accepted connection ended and no new one came for `quiet` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                n = len(self.conns)
                all_done = all(r.done for r in self.conns)
            if all_done:
                time.sleep(quiet)
                with self._cond:
                    if len(self.conns) == n and all(r.done for r in self.conns):
                        return
            else:
                time.sleep(0.05)

    def stop(self) -> None:
        self._stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        if self.unix and not self.unix.startswith("@"):
            try:
                os.unlink(self.unix)  # a server gone for good leaves no socket file
            except FileNotFoundError:
                pass
        with self._cond:
            socks = list(self._open.values())
        for c in socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join(2)
        for t in self._threads:
            t.join(2)


class EchoServer(Server):
    """Echoes every byte; after the client's FIN, finishes echoing, then FIN."""

    def handle(self, c, rec):
        buf = bytearray(256 * KiB)
        view = memoryview(buf)
        while True:
            n = c.recv_into(buf)
            if n == 0:
                break
            rec.received += n
            c.sendall(view[:n])
            rec.sent += n
        c.shutdown(socket.SHUT_WR)
        self._end(rec, "eof")


class SinkServer(Server):
    """Records every connection's bytes (keep="bytes" | "sha256" | "count") until EOF or
    reset. With `reply` (a function ConnRecord -> bytes/Stream), sends that after the
    client's EOF, then closes; otherwise closes after EOF."""

    def __init__(self, *, keep: str = "bytes", reply=None, **kw):
        self.reply = reply
        super().__init__(keep=keep, **kw)

    def handle(self, c, rec):
        how = self._read_all(c, rec)
        if how == "eof" and self.reply is not None:
            for piece in as_stream(self.reply(rec)).chunks():
                c.sendall(piece)
                rec.sent += len(piece)
            c.shutdown(socket.SHUT_WR)
        self._end(rec, how)

    def records(self, timeout: float = 30.0) -> list[ConnRecord]:
        self.settle(timeout=timeout)
        with self._cond:
            return list(self.conns)


class FloodServer(Server):
    """Sends `total` bytes of Stream(seed) to every connection as fast as the peer takes
    them (a request is not needed), then closes. Records how much it sent and how it ended."""

    def __init__(self, total: int, seed: int = 7, **kw):
        self.stream = Stream(seed, total)
        super().__init__(**kw)

    def handle(self, c, rec):
        for piece in self.stream.chunks(256 * KiB):
            c.sendall(piece)
            rec.sent += len(piece)
        c.shutdown(socket.SHUT_WR)
        self._end(rec, "sent all")


class ResetServer(Server):
    """Reads `after` bytes, then closes with a reset (SO_LINGER 0). Optionally sends
    `reply` bytes first."""

    def __init__(self, after: int, reply: bytes = b"", **kw):
        self.after = after
        self.reply_bytes = reply
        super().__init__(**kw)

    def handle(self, c, rec):
        if self.reply_bytes:
            c.sendall(self.reply_bytes)
            rec.sent += len(self.reply_bytes)
        while rec.received < self.after:
            d = c.recv(min(65536, self.after - rec.received))
            if not d:
                break
            rec.received += len(d)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        self._end(rec, "reset sent")


class StallServer(Server):
    """Accepts and never reads (keeps the connection open until stop())."""

    def __init__(self, rcvbuf: int | None = 4096, **kw):
        super().__init__(rcvbuf=rcvbuf, **kw)

    def handle(self, c, rec):
        while not self._stopping:
            time.sleep(0.05)
        self._end(rec, "stopped")


class RefusingPort:
    """A port bound but never listening: connects to it are refused (RST) at once, and
    no other process can take the port while this object lives."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.address = f"{self.host}:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()


class Blackhole:
    """A listening socket whose backlog is full (listen(0) plus filler connections), so
    further SYNs are dropped and a connect() hangs: a deterministic connect timeout."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.host, self.port = self.sock.getsockname()[:2]
        self.address = f"{self.host}:{self.port}"
        self.fillers = []
        for _ in range(8):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            f.connect_ex((host, self.port))
            self.fillers.append(f)
            time.sleep(0.05)
            try:
                f.getpeername()
            except OSError:
                return  # this one hangs: the queue is full
        raise RuntimeError("could not fill the listen backlog")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


# ----------------------------------------------------------------------------------------
# nginx and wrk


class NginxServer:
    """Debian's nginx serving a fixed file (GET /FILE_NAME) on 127.0.0.1:port.
    `listen_options` are appended to the listen directive (e.g. "proxy_protocol"),
    `server_lines` to the server block (e.g. a `return`, ssl_certificate ...)."""

    FILE_NAME = "index.html"

    def __init__(self, body: bytes = b"x" * 4096, workers: int = 1, *,
                 listen_options: str = "", server_lines: str = ""):
        self.dir = tempfile.mkdtemp(prefix="grelay-nginx-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.body = body
        root = os.path.join(self.dir, "html")
        os.makedirs(root)
        with open(os.path.join(root, self.FILE_NAME), "wb") as f:
            f.write(body)
        user = pwd.getpwuid(os.getuid()).pw_name
        d = self.dir
        conf = f"""
{"user " + user + ";" if os.getuid() == 0 else ""}
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096 {listen_options};
    root {root};
    {server_lines}
  }}
}}
"""
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None

    @staticmethod
    def available() -> str:
        """'' when nginx can be used, else why not."""
        return "" if shutil.which("nginx") else "nginx is not installed"

    def __enter__(self):
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", self.conf, "-e",
                                      os.path.join(self.dir, "error.log"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ok = wait_for(lambda: self.proc.poll() is not None or _can_connect(self.port), 10)
        if not ok or self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.__exit__()
            raise RuntimeError(f"nginx did not start: {err}\n{self.error_log()}")
        return self

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class HaproxyServer:
    """Debian's HAProxy on 127.0.0.1:port, in HTTP mode: `bind_options` are appended to
    the bind line (e.g. "accept-proxy"), `frontend_lines` to the frontend (e.g. an
    `http-request return`)."""

    def __init__(self, *, bind_options: str = "", frontend_lines: str = ""):
        self.dir = tempfile.mkdtemp(prefix="grelay-haproxy-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write(f"""global
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:{self.port} {bind_options}
  {frontend_lines}
""")
        self.proc = None
        self.log_path = os.path.join(self.dir, "haproxy.log")

    @staticmethod
    def available() -> str:
        """'' when haproxy can be used, else why not."""
        return "" if shutil.which("haproxy") else "haproxy is not installed"

    def __enter__(self):
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["haproxy", "-f", self.conf, "-db"],
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        ok = wait_for(lambda: self.proc.poll() is not None or _can_connect(self.port), 10)
        if not ok or self.proc.poll() is not None:
            self.__exit__()
            raise RuntimeError(f"haproxy did not start: {self.log()}")
        return self

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclasses.dataclass
class WrkResult:
    requests: int = 0
    duration: float = 0.0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeout_errors: int = 0
    non_2xx: int = 0
    exit_code: int = 0
    output: str = ""

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeout_errors


def run_wrk(url: str, *, threads: int = 2, connections: int = 64, duration: str = "5s",
            timeout: str = "5s") -> WrkResult:
    """Runs wrk and parses its summary ("N requests in", "Socket errors", "Non-2xx")."""
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}",
                          f"--timeout={timeout}", url], capture_output=True, text=True,
                         timeout=120)
    text = out.stdout + out.stderr
    r = WrkResult(exit_code=out.returncode, output=text)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if m:
        r.requests = int(m.group(1))
        unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}.get(m.group(3), 1.0)
        r.duration = float(m.group(2)) * unit
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r.connect_errors, r.read_errors, r.write_errors, r.timeout_errors = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r.non_2xx = int(m.group(1))
    return r


# ----------------------------------------------------------------------------------------
# Test running


class GrelayTest(unittest.TestCase):
    """Prints the log of every grelay started during a test when that test fails, and
    kills any grelay a test left running. Skips when io_uring is unusable here, unless
    the class sets needs_uring = False."""

    needs_uring = True

    def setUp(self):
        if self.needs_uring:
            require_uring(self)

    def run(self, result=None):
        result = result or self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        start = len(Grelay.instances)
        t0 = time.monotonic()
        super().run(result)
        failed = len(result.failures) + len(result.errors) > before
        for g in Grelay.instances[start:]:
            if failed:
                print(f"\n--- {self.id()}: grelay log ({g.config_path}) ---\n{g.text}\n"
                      f"{g.log_tail(200)}", file=sys.stderr)
            g.kill()
            if not failed:
                shutil.rmtree(g.dir, ignore_errors=True)  # kept for a failure's post-mortem
        log(f"{self.id()} took {time.monotonic() - t0:.1f}s")
        return result


def main() -> None:
    """Runs the calling module's tests (or those named on the command line, e.g.
    `test_drain.py DrainTest.test_drain_timeout_bounds_the_exit`): exit 0 on pass, 77 if
    every test was skipped (reasons printed), 1 on failure."""
    if not GRELAY_BIN or not os.access(GRELAY_BIN, os.X_OK):
        print(f"GRELAY_BIN is not an executable: {GRELAY_BIN!r}; set GRELAY_BIN", file=sys.stderr)
        sys.exit(1)
    log(f"binary {GRELAY_BIN} (sanitized={SANITIZED}), relay_path={RELAY_PATH}, "
        f"workers={WORKERS}, scale={SCALE}")
    module = sys.modules["__main__"]
    names = [a for a in sys.argv[1:] if not a.startswith("-")]
    loader = unittest.defaultTestLoader
    # `test_x.py Class.test_method ...` runs only those.
    suite = loader.loadTestsFromNames(names, module) if names else loader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    for t, why in result.skipped:
        print(f"SKIPPED {t.id()}: {why}")
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun > 0 and len(result.skipped) == result.testsRun:
        sys.exit(SKIP)
    sys.exit(0)


def require_uring(test: unittest.TestCase) -> None:
    """Skips `test` when io_uring cannot be used on this machine at all."""
    ok, text = _uring_cached()
    if not ok:
        test.skipTest("io_uring unavailable here: " + " ".join(text.split()))


_uring_cache: tuple[bool, str] | None = None


def _uring_cached() -> tuple[bool, str]:
    global _uring_cache
    if _uring_cache is None:
        _uring_cache = uring_status()
    return _uring_cache


# ----------------------------------------------------------------------------------------
# TLS: certificates made at test time with the openssl CLI, TLS clients and servers


class Certs:
    """Test certificates, generated with the `openssl` CLI into a temp dir on creation:

      ca              a CA (ca.pem / ca.key)
      server          CA-signed, SAN DNS:localhost, IP:127.0.0.1 (RSA 2048)
      upstream        CA-signed, same names (EC P-256)
      expired         CA-signed, same names, valid Jan 2020 only (`openssl ca -startdate/-enddate`)
      self_signed     self-signed, same names
      wrong_host      CA-signed, SAN DNS:wrong.example.org, IP:10.9.8.7 only

    Each name is a (cert path, key path) pair; `ca` is the CA certificate path.
    """

    NAMES = "DNS:localhost,IP:127.0.0.1"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="grelay-certs-")
        d = self.dir
        self.ca = os.path.join(d, "ca.pem")
        self.ca_key = os.path.join(d, "ca.key")
        self._openssl("req", "-x509", *self._ec(), "-nodes", "-keyout", self.ca_key,
                      "-out", self.ca, "-days", "30", "-subj", "/CN=grelay test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.makedirs(os.path.join(d, "db"))
        open(os.path.join(d, "db", "index.txt"), "w").close()
        with open(os.path.join(d, "db", "serial"), "w") as f:
            f.write("1000\n")
        self.server = self._signed("server", "/CN=localhost", self.NAMES, rsa=True)
        self.upstream = self._signed("upstream", "/CN=localhost", self.NAMES)
        self.expired = self._signed("expired", "/CN=localhost", self.NAMES,
                                    dates=("20200101000000Z", "20200201000000Z"))
        self.wrong_host = self._signed("wrong_host", "/CN=wrong.example.org",
                                       "DNS:wrong.example.org,IP:10.9.8.7")
        cert, key = os.path.join(d, "self_signed.pem"), os.path.join(d, "self_signed.key")
        self._openssl("req", "-x509", *self._ec(), "-nodes", "-keyout", key, "-out", cert,
                      "-days", "30", "-subj", "/CN=localhost",
                      "-addext", f"subjectAltName={self.NAMES}")
        self.self_signed = (cert, key)

    @staticmethod
    def available() -> str:
        """'' when certificates can be made here, else why not."""
        return "" if shutil.which("openssl") else "the openssl command is not installed"

    @staticmethod
    def _ec() -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]

    def _openssl(self, *args) -> str:
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=self.dir,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r.stdout

    def _ca_config(self) -> str:
        """The `openssl ca` configuration of the test CA, up to its per-use lines."""
        d = self.dir
        return f"""[ca]
default_ca = test
[test]
dir = {d}
database = {d}/db/index.txt
serial = {d}/db/serial
new_certs_dir = {d}/db
certificate = {self.ca}
private_key = {self.ca_key}
default_md = sha256
"""

    def _signed(self, name: str, subject: str, san: str, rsa: bool = False,
                dates: tuple[str, str] | None = None,
                usage: str = "serverAuth", ocsp_url: str = "") -> tuple[str, str]:
        d = self.dir
        key, csr, cert = (os.path.join(d, f"{name}.{x}") for x in ("key", "csr", "pem"))
        keyopts = ["-newkey", "rsa:2048"] if rsa else self._ec()
        self._openssl("req", *keyopts, "-nodes", "-keyout", key, "-out", csr, "-subj", subject)
        cnf = os.path.join(d, f"{name}.cnf")
        with open(cnf, "w") as f:
            f.write(self._ca_config() + f"""default_days = 30
policy = anything
unique_subject = no
[anything]
commonName = supplied
[ext]
subjectAltName = {san}
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = {usage}
""" + (f"authorityInfoAccess = OCSP;URI:{ocsp_url}\n" if ocsp_url else ""))
        args = ["ca", "-batch", "-config", cnf, "-in", csr, "-out", cert, "-extensions", "ext",
                "-notext"]
        if dates:
            args += ["-startdate", dates[0], "-enddate", dates[1]]
        self._openssl(*args)
        return cert, key

    def client(self, name: str, subject: str) -> tuple[str, str]:
        """A client certificate (clientAuth) signed by the CA, for mTLS."""
        return self._signed(name, subject, f"DNS:{name}.test", usage="clientAuth")

    def crl(self, revoked: list[str], dates: tuple[str, str] | None = None,
            name: str = "crl.pem") -> str:
        """The CA's certificate revocation list, revoking the certificates `revoked`
        (paths), current for 30 days or with `dates` (lastUpdate, nextUpdate): the path of
        the PEM file `name`."""
        d = self.dir
        cnf = os.path.join(d, "crl.cnf")
        with open(cnf, "w") as f:
            f.write(self._ca_config() + "default_crl_days = 30\n")
        for cert in revoked:
            self._openssl("ca", "-batch", "-config", cnf, "-revoke", cert)
        out = os.path.join(d, name)
        args = ["-crl_lastupdate", dates[0], "-crl_nextupdate", dates[1]] if dates else []
        self._openssl("ca", "-batch", "-config", cnf, "-gencrl", *args, "-out", out)
        return out

    def chain(self, cert: str) -> str:
        """`cert` followed by the CA's certificate (a "fullchain" file): the path."""
        out = cert[:-len(".pem")] + "_chain.pem" if cert.endswith(".pem") else cert + ".chain"
        with open(out, "w") as f:
            f.write(open(cert).read() + open(self.ca).read())
        return out

    def ocsp(self, cert: str, name: str, days: int = 7) -> str:
        """The CA's OCSP response (DER, no nonce: fit to staple) about `cert`, current for
        `days`, answered by `openssl ocsp` from the CA's database (good, or revoked after
        crl() revoked it): the path of the file `name`."""
        out = os.path.join(self.dir, name)
        self._openssl("ocsp", "-index", os.path.join(self.dir, "db", "index.txt"),
                      "-CA", self.ca, "-rsigner", self.ca, "-rkey", self.ca_key,
                      "-issuer", self.ca, "-cert", cert, "-no_nonce", "-ndays", str(days),
                      "-respout", out)
        return out

    def revoke(self, cert: str) -> None:
        """Marks `cert` revoked in the CA's database (what crl() and ocsp() answer from)."""
        cnf = os.path.join(self.dir, "revoke.cnf")
        with open(cnf, "w") as f:
            f.write(self._ca_config())
        self._openssl("ca", "-batch", "-config", cnf, "-revoke", cert)

    def ocsp_responder(self, port: int, minutes: int = 1) -> subprocess.Popen:
        """The CA's OCSP responder (`openssl ocsp -port`) on 127.0.0.1:`port`, answering from
        the CA's database (re-read when it changes) with responses current for `minutes`.
        Returns once it accepts connections; the caller terminates it."""
        p = subprocess.Popen(["openssl", "ocsp", "-index", os.path.join(self.dir, "db", "index.txt"),
                              "-port", str(port), "-CA", self.ca, "-rsigner", self.ca,
                              "-rkey", self.ca_key, "-nmin", str(minutes), "-ignore_err"],
                             cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # (Not by connecting: a connection that closes without a request wedges it.)
        if not wait_for(lambda: _listening_inodes(port), 10):
            p.kill()
            raise RuntimeError(f"openssl ocsp did not listen on port {port}")
        return p

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class TlsTest(GrelayTest):
    """A GrelayTest with a Certs set made once per class (`self.certs`); skips when
    certificates cannot be made here."""

    @classmethod
    def setUpClass(cls):
        cls.certs = None if Certs.available() else Certs()

    @classmethod
    def tearDownClass(cls):
        if cls.certs:
            cls.certs.cleanup()

    def setUp(self):
        super().setUp()
        if self.certs is None:
            self.skipTest(Certs.available())


def tls_client_context(cafile: str | None = None, *, verify: bool = True,
                       minimum=None, maximum=None, ciphers: str | None = None):
    """An ssl.SSLContext for a client of grelay (ssl is imported lazily: stdlib)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def tls_server_context(cert: str, key: str):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclasses.dataclass
class TlsSessionResult(SessionResult):
    version: str = ""              # negotiated protocol, e.g. "TLSv1.3"
    cipher: str = ""               # negotiated cipher, e.g. "TLS_AES_256_GCM_SHA384"
    handshake_error: str | None = None
    close_notify: bool = False     # the peer ended its direction with close_notify

    def __str__(self) -> str:
        return (f"{SessionResult.__str__(self)}, {self.version or '-'} {self.cipher or '-'}, "
                f"close_notify={self.close_notify}, handshake_error={self.handshake_error}")


def tls_stream_session(port: int, data=b"", *, context, server_hostname: str = "localhost",
                       expect="echo", keep: bool = False, half_close: bool = True,
                       timeout: float = 60.0, host: str = "127.0.0.1",
                       index: int = -1) -> TlsSessionResult:
    """stream_session() over TLS, in one thread: a non-blocking socket and an
    ssl.SSLObject on memory BIOs, so sending and receiving interleave without sharing an
    SSL object between threads. After the last byte (half_close): close_notify, then TCP
    SHUT_WR; reads until EOF, reset or `timeout` s of silence. ok means the expected bytes
    came back exactly, the peer sent close_notify and the stream ended with EOF."""
    import selectors
    import ssl
    res = TlsSessionResult(index=index)
    src = as_stream(data)
    exp = src if expect == "echo" else expect
    checker = Checker(exp) if exp is not None else None
    kept = bytearray() if keep else None
    t0 = time.monotonic()
    try:
        s = connect(port, host, timeout)
    except OSError as e:
        res.connect_error = repr(e)
        res.end = "reset" if isinstance(e, ConnectionResetError) else "connect failed"
        res.check = "not connected"
        res.elapsed = time.monotonic() - t0
        return res
    res.local_port = s.getsockname()[1]
    s.setblocking(False)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_side=False,
                           server_hostname=server_hostname)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    pieces = src.chunks(64 * KiB)
    wire = bytearray()     # ciphertext not yet sent
    handshaken = src_done = notify_queued = shut = tcp_eof = False
    last = time.monotonic()
    try:
        while True:
            if not handshaken:
                try:
                    obj.do_handshake()
                    handshaken = True
                    res.version = obj.version() or ""
                    res.cipher = (obj.cipher() or ("",))[0]
                except ssl.SSLWantReadError:
                    pass
            if handshaken and not src_done and len(wire) < 256 * KiB:
                piece = next(pieces, None)
                if piece is None:
                    src_done = True
                else:
                    obj.write(piece)
                    res.sent += len(piece)
            if src_done and half_close and not notify_queued:
                notify_queued = True
                try:
                    obj.unwrap()  # queues close_notify; the peer's comes later
                except ssl.SSLWantReadError:
                    pass
            wire += outgoing.read()
            while wire:
                try:
                    n = s.send(wire)
                except BlockingIOError:
                    break
                del wire[:n]
                last = time.monotonic()
            if notify_queued and not wire and not shut:
                s.shutdown(socket.SHUT_WR)
                shut = True
            sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if wire else 0))
            if sel.select(0.05) and not tcp_eof:
                try:
                    got = s.recv(256 * KiB)
                except BlockingIOError:
                    got = None
                if got == b"":
                    tcp_eof = True
                    incoming.write_eof()
                elif got:
                    incoming.write(got)
                    last = time.monotonic()
            while handshaken and not res.close_notify:
                try:
                    plain = obj.read(256 * KiB)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    res.close_notify = True
                    break
                if not plain:
                    break
                res.received += len(plain)
                if checker:
                    checker.feed(plain)
                if kept is not None:
                    kept += plain
            if tcp_eof:
                if not handshaken:
                    obj.do_handshake()  # raises why the handshake could not finish
                res.end = "eof"
                break
            if time.monotonic() - last > timeout:
                res.end = "timeout"
                break
    except ssl.SSLError as e:
        if not handshaken:
            res.handshake_error = f"{type(e).__name__}: {e}"
            res.end = "handshake failed"
        else:
            res.end = f"error: {type(e).__name__}: {e}"
    except OSError as e:
        res.end = _read_end(e)
        if not handshaken:
            res.handshake_error = res.end
    sel.close()
    s.close()
    res.elapsed = time.monotonic() - t0
    if kept is not None:
        res.data = bytes(kept)
    ended = res.end == "eof" and res.sent == len(src) and (res.close_notify or not half_close)
    if checker:
        res.check = checker.describe()
        res.ok = checker.complete and ended
    else:
        res.check = "unchecked"
        res.ok = ended
    return res


class TlsEchoServer(Server):
    """A TLS server (Python ssl; `cert`, `key` paths) that echoes every byte. After the
    client's close_notify (or EOF) it answers with close_notify and FIN. A failed handshake
    ends the record with "error: SSLError(...)"; `handshakes` counts completed ones."""

    def __init__(self, cert: str, key: str, *, alpn: list[str] | None = None,
                 client_ca: str | None = None, **kw):
        self.context = tls_server_context(cert, key)
        self.client_subjects: list = []  # with client_ca: each verified client's subject CN
        if client_ca:
            import ssl
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.handshakes = 0
        self.server_names: list = []  # the SNI of every ClientHello (None: none sent)
        self.protocols: list = []  # the protocol ALPN chose in each handshake (None: none)
        self.resumed: list = []  # whether each handshake resumed a session
        self.context.sni_callback = self._sni
        if alpn:
            self.context.set_alpn_protocols(alpn)
        super().__init__(**kw)

    def _sni(self, _obj, name, _ctx):
        with self._cond:
            self.server_names.append(name)

    def handle(self, c, rec):
        c.settimeout(30)
        t = self.context.wrap_socket(c, server_side=True)
        with self._cond:
            self.handshakes += 1
            self.protocols.append(t.selected_alpn_protocol())
            self.resumed.append(t.session_reused)
            peer = t.getpeercert() if self.context.verify_mode else None
            if peer:
                self.client_subjects.append(dict(x[0] for x in peer["subject"])["commonName"])
        while True:
            d = t.recv(256 * KiB)
            if not d:
                break
            self._record(rec, d)
            t.sendall(d)
            rec.sent += len(d)
        try:
            t.unwrap().shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._end(rec, "eof")


def tap_session_flags(paths) -> dict:
    """Reads the SessionOpen records of tap files (proxy/tap/FORMAT.md): {(file, session
    id): flags}. `grelay tap export` has no output for the flags; this walks the blocks."""
    out = {}
    files = []
    for p in ([paths] if isinstance(paths, str) else paths):
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".gtap"))
        else:
            files.append(p)
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        if data[:8] != b"GRELAYTP":
            raise ValueError(f"{path}: not a tap file")
        off = struct.unpack_from("<H", data, 10)[0]
        while off + 16 <= len(data):
            magic, btype, _flags, size = struct.unpack_from("<4sHHI", data, off)
            if magic != b"GTBK" or size < 16 or size % 8:
                off += 8  # a block never written (writer still running): scan on
                continue
            if btype == 2 and off + 40 <= len(data):
                sid, _t, flags = struct.unpack_from("<QQI", data, off + 16)
                out[(path, sid)] = flags
            if btype == 6:
                break
            off += size
    return out


TAP_SESSION_TLS_TERMINATED = 1


def tshark_follow(pcap: str, stream: int = 0) -> tuple[bytes, bytes]:
    """`tshark -q -z follow,tcp,raw,N`: (bytes node 0 sent, bytes node 1 sent); node 0 is
    the side that sent the first packet (the client of a grelay tap export)."""
    out = subprocess.run(["tshark", "-r", pcap, "-q", "-z", f"follow,tcp,raw,{stream}"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"tshark failed: {out.stderr}")
    text = out.stdout
    body = text.split("Node 1:", 1)[1].split("\n", 1)[1] if "Node 1:" in text else ""
    sides = [bytearray(), bytearray()]
    for line in body.split("\n"):
        if not line.strip() or line.startswith("="):
            continue
        sides[1 if line.startswith("\t") else 0] += bytes.fromhex(line.strip())
    return bytes(sides[0]), bytes(sides[1])


# ----------------------------------------------------------------------------------------
# Fault injection, many idle connections, long runs (test_faults, test_idle_connections,
# test_soak)


class BackgroundSessions:
    """Byte-exact echo sessions run back to back, `parallel` at a time, until stop(): the
    healthy traffic that must go on through grelay while a test injects a fault elsewhere.
    Each session sends Stream(seed, size) and checks what comes back (stream_session()).

        with h.BackgroundSessions(port) as bg:
            ... inject the fault ...
        bg.assert_healthy(self)          # every session ok, at least `minimum` of them
    """

    def __init__(self, port: int, *, size: int = 256 * KiB, parallel: int = 2,
                 seed_base: int = 7_000_000, timeout: float = 30.0, pause: float = 0.0,
                 **session_kw):
        self.port = port
        self.size = size
        self.parallel = parallel
        self.timeout = timeout
        self.pause = pause
        self.session_kw = session_kw
        self.results: list[SessionResult] = []
        self._seed = seed_base
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "BackgroundSessions":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "BackgroundSessions":
        for _ in range(self.parallel):
            t = threading.Thread(target=self._loop, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._seed += 1
                seed = self._seed
            r = stream_session(self.port, Stream(seed, self.size), timeout=self.timeout,
                               index=seed, **self.session_kw)
            with self._lock:
                self.results.append(r)
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self) -> list[SessionResult]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 10)
        self._threads = []
        return self.results

    @property
    def failures(self) -> list[SessionResult]:
        with self._lock:
            return [r for r in self.results if not r.ok]

    def completed(self) -> int:
        with self._lock:
            return sum(1 for r in self.results if r.ok)

    def assert_healthy(self, test: unittest.TestCase, minimum: int = 1) -> None:
        self.stop()
        bad = self.failures
        test.assertFalse(bad, f"{len(bad)} of {len(self.results)} healthy sessions failed; "
                              f"first: {bad[0] if bad else ''}")
        test.assertGreaterEqual(len(self.results), minimum,
                                f"only {len(self.results)} healthy sessions ran")


_SINK_PROCESS = r"""
import socket, sys, threading, time
delay = float(sys.argv[1])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(1024)
print(s.getsockname()[1], flush=True)
def drain(c):
    while True:
        try:
            d = c.recv(65536)
        except OSError:
            return
        if not d:
            return
        if delay:
            time.sleep(delay)
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""


class KillableSink:
    """A sink (reads and discards) in its own python3 process, so a test can kill -9 it the
    way a crashing mirror dies: the kernel closes its sockets (RST where bytes were unread).
    `read_delay` seconds of sleep after every read keeps bytes unread."""

    def __init__(self, read_delay: float = 0.0):
        self.proc = subprocess.Popen([sys.executable, "-c", _SINK_PROCESS, str(read_delay)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the sink process did not start")
        self.port = int(line)
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class EpollEchoServer:
    """An echo server for thousands of connections in one thread (selectors/epoll), where
    EchoServer's thread per connection would not scale. Counts accepted and open
    connections and bytes echoed."""

    def __init__(self, host: str = "127.0.0.1", backlog: int = 4096):
        import selectors
        self._sel = selectors.DefaultSelector()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()[:2]
        self.address = f"{self.host}:{self.port}"
        self.accepted = 0
        self.open = 0
        self.echoed = 0
        self._stop = False
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def _loop(self) -> None:
        import selectors
        while not self._stop:
            for key, events in self._sel.select(0.1):
                if key.data is None:
                    while True:
                        try:
                            c, _ = self.sock.accept()
                        except (BlockingIOError, OSError):
                            break
                        c.setblocking(False)
                        # data: [bytes received and not yet echoed, EOF seen]
                        self._sel.register(c, selectors.EVENT_READ, [bytearray(), False])
                        self.accepted += 1
                        self.open += 1
                    continue
                c, state = key.fileobj, key.data
                pending = state[0]
                ok = True
                if events & selectors.EVENT_READ:
                    try:
                        d = c.recv(65536)
                        if d:
                            pending += d
                        else:
                            state[1] = True  # EOF: close once the echo is out
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        ok = False
                # Echo what the send buffer takes; the rest waits for EVENT_WRITE, and
                # nothing more is read meanwhile (back-pressure, as a real server).
                while ok and pending:
                    try:
                        n = c.send(pending)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        ok = False
                        break
                    del pending[:n]
                    self.echoed += n
                if not ok or (state[1] and not pending):
                    self._sel.unregister(c)
                    c.close()
                    self.open -= 1
                    continue
                want = selectors.EVENT_WRITE if pending else selectors.EVENT_READ
                if key.events != want:
                    self._sel.modify(c, want, state)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(n: int) -> int:
    """Raises this process's soft RLIMIT_NOFILE to at least n (up to the hard limit);
    returns the soft limit now in force."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


class Tmpfs:
    """A tmpfs of `size` (mount -t tmpfs -o size=SIZE) on a fresh temp dir; needs root.
    Tmpfs.mount("2m") returns (Tmpfs, "") or (None, why it could not be mounted)."""

    def __init__(self, path: str):
        self.path = path

    @staticmethod
    def mount(size: str) -> "tuple[Tmpfs | None, str]":
        path = tempfile.mkdtemp(prefix="grelay-tmpfs-")
        if not shutil.which("mount"):
            return None, "no mount command"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs",
                            path], capture_output=True, text=True)
        if r.returncode != 0:
            os.rmdir(path)
            return None, f"cannot mount a tmpfs: {(r.stderr or r.stdout).strip()}"
        return Tmpfs(path), ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unmount()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", self.path], capture_output=True)
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def tls_client_hello(server_hostname: str = "localhost", alpn=None) -> bytes:
    """The bytes of a real TLS ClientHello (Python's defaults; offering the ALPN protocols
    `alpn` if given): sent slowly, a handshake that is valid so far but never completes."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # a PROXY protocol v2 header's first 12 bytes


def split_proxy_v2(data: bytes) -> tuple[bytes, bytes]:
    """A PROXY v2 header at the start of `data`, and the bytes after it."""
    assert data[:12] == V2_SIGNATURE, data[:16]
    end = 16 + struct.unpack("!H", data[14:16])[0]
    return data[:end], data[end:]


def read_tlvs(header: bytes) -> list[tuple[int, bytes]]:
    """The TLVs of a TCP4 v2 header, checking that they fill it exactly."""
    assert header[:12] == V2_SIGNATURE and header[13] == 0x11, header[:16]
    end = 16 + struct.unpack("!H", header[14:16])[0]
    assert end == len(header), (end, len(header))
    out, at = [], 28
    while at < end:
        kind, n = header[at], struct.unpack("!H", header[at + 1:at + 3])[0]
        out.append((kind, header[at + 3:at + 3 + n]))
        at += 3 + n
    assert at == end
    return out


def sample_rss(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
