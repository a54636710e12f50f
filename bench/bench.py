#!/usr/bin/env python3
"""grelay's load benchmark: wrk against grelay and its peers, on loopback.

Run it through bench/run.sh (installs the packages, builds grelay and the sink). Directly:

    bench/bench.py --grelay BIN --sink BIN [--quick] [--cases a,b] [--reps N] [--duration S]

Every case runs the same wrk (threads, connections, duration, timeout) against an nginx
origin serving /100b and /1m, through one proxy with one worker (or directly). Cases are
repeated round-robin (repetition 1 of every case, then repetition 2, ...) so drift and
other load on the machine hit all of them alike; the tables report medians.

Writes PREFIX.json, PREFIX.md and PREFIX.png: bench/results/latest.* (and the results
section of bench/README.md) for a full run, bench/results/tmp/{quick,partial}.* for
--quick, --cases or --compare runs, or --out PREFIX. Exit status: 0 when every run completed and no
grelay run had errors (socket errors, non-2xx, wrong response sizes, a proxy that died,
a healthy mirror missing requests); 1 otherwise; 2 on a usage error. Performance targets
are reported, never gate the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIZES = {"100b": 100, "1m": 1 << 20}
SIZE_TEXT = {"100b": "100 B", "1m": "1 MiB"}


# ----------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    proxy: str  # direct | grelay | nginx_stream | haproxy | nginx_mirror
    size: str  # 100b | 1m
    title: str
    section: str
    mirrors: int = 0  # healthy mirrors (sinks that read everything)
    stall: bool = False  # one extra mirror that accepts and never reads
    tap: bool = False
    peers: tuple = ()  # peer cases this case is compared with ("vs best peer")
    own_base: str = ""  # the same proxy without mirrors ("vs 0 mirrors")
    warmup: bool = True
    pad: int = 0  # bytes of an extra request header (X-Pad), to make requests bigger
    binary: str = ""  # another grelay binary (--compare); "" = --grelay

    @property
    def direct(self) -> str:
        return f"direct_{self.size}"

    @property
    def is_grelay(self) -> bool:
        return self.proxy == "grelay"


RELAY = "Relay (L4, no mirror)"
MIRROR = "Mirroring (100-byte responses; mirrors get the requests)"
STALL = "A stalled mirror (accepts, never reads; 4 KiB requests, 100-byte responses)"
# The stall cases send ~4 KiB requests (an X-Pad header): with ~40-byte GETs the kernel's
# socket buffers would absorb a stalled mirror's backlog for minutes and grelay would
# never have to cut it; with 4 KiB requests the backlog reaches grelay within a second.
STALL_PAD = 4000
L4_PEERS = {s: (f"nginx_stream_{s}", f"haproxy_{s}", f"haproxy_splice_{s}") for s in SIZES}

CASES = [
    Case("direct_100b", "direct", "100b", "wrk → origin", RELAY),
    Case("grelay_100b", "grelay", "100b", "grelay", RELAY, peers=L4_PEERS["100b"]),
    Case("nginx_stream_100b", "nginx_stream", "100b", "nginx stream proxy", RELAY,
         peers=L4_PEERS["100b"]),
    Case("haproxy_100b", "haproxy", "100b", "HAProxy TCP, splice-auto", RELAY,
         peers=L4_PEERS["100b"]),
    Case("haproxy_splice_100b", "haproxy", "100b", "HAProxy TCP, splice always", RELAY,
         peers=L4_PEERS["100b"]),
    Case("direct_1m", "direct", "1m", "wrk → origin", RELAY),
    Case("grelay_1m", "grelay", "1m", "grelay", RELAY, peers=L4_PEERS["1m"]),
    Case("nginx_stream_1m", "nginx_stream", "1m", "nginx stream proxy", RELAY,
         peers=L4_PEERS["1m"]),
    Case("haproxy_1m", "haproxy", "1m", "HAProxy TCP, splice-auto", RELAY, peers=L4_PEERS["1m"]),
    Case("haproxy_splice_1m", "haproxy", "1m", "HAProxy TCP, splice always", RELAY,
         peers=L4_PEERS["1m"]),
    Case("grelay_mirror1", "grelay", "100b", "grelay, 1 mirror", MIRROR, mirrors=1,
         peers=("nginx_mirror1",), own_base="grelay_100b"),
    Case("grelay_mirror2", "grelay", "100b", "grelay, 2 mirrors", MIRROR, mirrors=2,
         peers=("nginx_mirror2",), own_base="grelay_100b"),
    Case("grelay_mirror2_tap", "grelay", "100b", "grelay, 2 mirrors + tap", MIRROR, mirrors=2,
         tap=True, peers=("nginx_mirror2",), own_base="grelay_100b"),
    Case("nginx_mirror0", "nginx_mirror", "100b", "nginx HTTP proxy, no mirror", MIRROR,
         peers=("nginx_mirror0",), own_base="nginx_mirror0"),
    Case("nginx_mirror1", "nginx_mirror", "100b", "nginx HTTP proxy, 1 mirror", MIRROR,
         mirrors=1, peers=("nginx_mirror1",), own_base="nginx_mirror0"),
    Case("nginx_mirror2", "nginx_mirror", "100b", "nginx HTTP proxy, 2 mirrors", MIRROR,
         mirrors=2, peers=("nginx_mirror2",), own_base="nginx_mirror0"),
    Case("grelay_4k", "grelay", "100b", "grelay, no mirror", STALL, pad=STALL_PAD,
         own_base="grelay_4k"),
    Case("grelay_stall", "grelay", "100b", "grelay, 1 stalled mirror", STALL, stall=True,
         pad=STALL_PAD, peers=("nginx_mirror_stall",), own_base="grelay_4k"),
    Case("nginx_mirror_stall", "nginx_mirror", "100b", "nginx HTTP proxy, 1 stalled mirror",
         STALL, stall=True, pad=STALL_PAD, peers=("nginx_mirror_stall",),
         own_base="nginx_mirror0", warmup=False),
]
CASE_BY_NAME = {c.name: c for c in CASES}

# The mirror location's timeouts in the nginx mirror cases: a stalled mirror holds each
# client connection this long per request (nginx's default, 60s, would give ~0 req/s).
NGINX_MIRROR_TIMEOUT = "1s"


# ----------------------------------------------------------------------------------------
# Small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(pred, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx's master and workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pids) -> float:
    """utime + stime of the processes (all their threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    steal = vals[7] if len(vals) > 7 else 0
    return (sum(vals[:8]) - idle - steal) / CLK_TCK


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_text(cmd) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def taskset(cpus: str | None) -> list[str]:
    """The launcher prefix of a benchmark process: its CPU pinning."""
    return ["taskset", "-c", cpus] if cpus else []


def set_priority(nice: int) -> str:
    """--nice: the priority of everything the bench starts. With scheduler autogroups on
    (most distributions), CPU is shared between sessions first, so a process's own nice
    level only matters inside its session: the session's autogroup nice is set instead."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            autogroup = f.read().strip() == "1"
    except OSError:
        autogroup = False
    if autogroup:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
        return f"autogroup nice {nice}"
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    return f"nice {nice}"


def stop_process(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------------
# Processes: origin, sinks, proxies


class Origin:
    """Debian's nginx (1 worker) serving /100b and /1m: the upstream of every case."""

    def __init__(self, workdir: str, cpus: str | None, sendfile: bool):
        self.dir = os.path.join(workdir, "origin")
        root = os.path.join(self.dir, "html")
        os.makedirs(root)
        pattern = bytes(range(33, 127))
        for name, size in SIZES.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write((pattern * (size // len(pattern) + 1))[:size])
        self.port = free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(nginx_main(self.dir) + f"""
http {{
{nginx_http_common(self.dir)}
  sendfile {"on" if sendfile else "off"};
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    root {root};
  }}
}}
""")
        self.proc = start_nginx(self.dir, self.conf, self.port, cpus)
        self.response_len = {name: self._response_len(name) for name in SIZES}

    def _response_len(self, name: str) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(f"GET /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            m = re.search(rb"content-length:\s*(\d+)", head, re.I)
            if not head.startswith(b"HTTP/1.1 200") or not m:
                raise RuntimeError(f"origin: unexpected response to /{name}: {head!r}")
            return len(head) + 4 + int(m.group(1))

    @property
    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


def nginx_main(d: str) -> str:
    user = "user root;" if os.getuid() == 0 else ""
    return f"""{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
"""


def nginx_http_common(d: str) -> str:
    return f"""  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;"""


def start_nginx(d: str, conf: str, port: int, cpus: str | None) -> subprocess.Popen:
    errlog = os.path.join(d, "error.log")
    proc = subprocess.Popen([*taskset(cpus), "nginx", "-p", d, "-c", conf, "-e", errlog,
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if not wait_for(lambda: proc.poll() is not None or can_connect(port), 10) or \
            proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
        stop_process(proc)
        raise RuntimeError(f"nginx did not start ({conf}): {err}")
    return proc


class Sink:
    """bench-sink in MODE (http204 | discard | stall), on a port it picks itself."""

    def __init__(self, binary: str, mode: str, cpus: str | None, batch_us: int = 0):
        self.mode = mode
        self.proc = subprocess.Popen([*taskset(cpus), binary, mode, "0", str(batch_us)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening 127\.0\.0\.1:(\d+)", line)
        if not m:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            stop_process(self.proc)
            raise RuntimeError(f"bench-sink {mode} did not start: {line!r} {err}")
        self.port = int(m.group(1))
        self.address = f"127.0.0.1:{self.port}"

    def stats(self) -> dict:
        self.proc.send_signal(signal.SIGUSR1)
        line = self.proc.stdout.readline()
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}

    def stop(self) -> None:
        stop_process(self.proc)


class Proxy:
    """One proxy process (tree) in front of the origin; url() is where wrk goes."""

    def __init__(self, case: Case, origin: Origin, sinks: list[Sink], args, workdir: str):
        self.case = case
        self.dir = tempfile.mkdtemp(prefix=f"{case.name}-", dir=workdir)
        self.admin_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.port = origin.port
        self.log_path = os.path.join(self.dir, "proxy.log")
        if case.proxy == "direct":
            return
        for attempt in range(3):  # another process may take a free_port() in between
            self.port = free_port()
            try:
                getattr(self, f"_start_{case.proxy}")(origin, sinks, args)
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def _spawn(self, cmd, cpus, ready_ports) -> None:
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*taskset(cpus), *cmd], stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        logf.close()
        ok = wait_for(lambda: self.proc.poll() is not None or all(can_connect(p)
                                                                    for p in ready_ports), 15)
        if not ok or self.proc.poll() is not None:
            stop_process(self.proc)
            raise RuntimeError(f"{self.case.proxy} did not start: {self.log_tail()}")

    def _start_grelay(self, origin: Origin, sinks: list[Sink], args) -> None:
        self.admin_port = free_port()
        lines = [
            "[server]", "workers = 1", 'relay_path = "auto"', *args.grelay_server, "",
            "[admin]", f'listen = "127.0.0.1:{self.admin_port}"', "",
            "[upstream.origin]", f'servers = ["127.0.0.1:{origin.port}"]', "",
            "[[listener]]", 'name = "bench"', f'listen = "127.0.0.1:{self.port}"',
            'upstream = "origin"',
        ]
        for i, s in enumerate(sinks, 1):
            lines += ["", "  [[listener.mirror]]", f'  name = "m{i}"', f'  address = "{s.address}"']
        if self.case.tap:
            lines += ["", "  [listener.tap]", f'  path = "{self.dir}/tap"', '  max_size = "64GiB"']
        conf = os.path.join(self.dir, "grelay.toml")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._spawn([self.case.binary or args.grelay, "-c", conf], args.pin.get("proxy"), [self.port, self.admin_port])

    def _start_nginx_stream(self, origin: Origin, sinks, args) -> None:
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"load_module {args.nginx_stream_module};\n" + nginx_main(self.dir) + f"""
stream {{
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    proxy_pass 127.0.0.1:{origin.port};
  }}
}}
""")
        self._nginx(conf, args)

    def _start_nginx_mirror(self, origin: Origin, sinks: list[Sink], args) -> None:
        ups = [f"  upstream origin {{ server 127.0.0.1:{origin.port}; keepalive 64; }}"]
        mirrors, locations = [], []
        keep = ('proxy_http_version 1.1; proxy_set_header Connection "";')
        t = NGINX_MIRROR_TIMEOUT
        for i, s in enumerate(sinks, 1):
            ups.append(f"  upstream sink{i} {{ server {s.address}; keepalive 64; }}")
            mirrors.append(f"mirror /_mirror{i};")
            locations.append(f"""    location = /_mirror{i} {{
      internal;
      proxy_pass http://sink{i}$request_uri;
      {keep}
      proxy_connect_timeout {t}; proxy_send_timeout {t}; proxy_read_timeout {t};
    }}""")
        conf = os.path.join(self.dir, "nginx.conf")
        nl = "\n"
        with open(conf, "w") as f:
            f.write(nginx_main(self.dir) + f"""
http {{
{nginx_http_common(self.dir)}
{nl.join(ups)}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location / {{
      {" ".join(mirrors)}
      proxy_pass http://origin;
      {keep}
    }}
{nl.join(locations)}
  }}
}}
""")
        self._nginx(conf, args)

    def _nginx(self, conf: str, args) -> None:
        self._spawn(["nginx", "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log"),
                     "-g", "daemon off;"], args.pin.get("proxy"), [self.port])

    def _start_haproxy(self, origin: Origin, sinks, args) -> None:
        # splice-auto (what the issue asked for) splices only when HAProxy's buffers fill,
        # which on loopback it did not: "splice always" forces splicing both ways.
        splice = ("option splice-request\n  option splice-response" if "splice_" in self.case.name
                  else "option splice-auto")
        conf = os.path.join(self.dir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 4096

defaults
  mode tcp
  {splice}
  timeout connect 5s
  timeout client 300s
  timeout server 300s

frontend bench
  bind 127.0.0.1:{self.port}
  default_backend origin

backend origin
  server origin 127.0.0.1:{origin.port}
""")
        self._spawn(["haproxy", "-f", conf, "-db"], args.pin.get("proxy"), [self.port])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.case.size}"

    @property
    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def metrics(self) -> dict:
        """grelay's counters summed per family (only for grelay)."""
        if not self.admin_port:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
        except OSError as e:
            return {"error": str(e)}
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"(grelay_\w+?)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
        return out

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # grelay drains (SIGTERM); nginx's SIGTERM is its fast shutdown; HAProxy too.
            stop_process(self.proc, timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# wrk


def run_wrk(args, url: str, duration: float, pad: int = 0) -> dict:
    """One wrk run; returns its WRK_JSON report plus wrk's own CPU seconds."""
    cmd = [*taskset(args.pin.get("wrk")), "wrk", f"-t{args.threads}", f"-c{args.connections}",
           f"-d{duration:g}s", f"--timeout={args.timeout:g}s", "-s",
           os.path.join(HERE, "wrk_report.lua")]
    if pad:
        cmd += ["-H", "X-Pad: " + "p" * pad]
    cmd.append(url)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: do not leave wrk running
            proc.kill()
            proc.wait()
            raise
        proc.returncode = 0  # reaped by wait4 above
        out.seek(0)
        text = out.read()
    m = re.search(r"^WRK_JSON (.*)$", text, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no report (exit status {status}):\n{text}")
    report = json.loads(m.group(1))
    report["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    report["exit_code"] = os.waitstatus_to_exitcode(status)
    return report


# ----------------------------------------------------------------------------------------
# perf: counters (--perf-stat) and profiles (--perf-record) of the proxy during a run

PERF_EVENTS = ("task-clock", "context-switches", "raw_syscalls:sys_enter",
               "io_uring:io_uring_submit_req", "io_uring:io_uring_complete",
               "io_uring:io_uring_poll_arm", "io_uring:io_uring_queue_async_work",
               "io_uring:io_uring_local_work_run", "io_uring:io_uring_task_work_run")


class PerfAttach:
    """perf stat and/or perf record attached to `pids` while the measured wrk runs."""

    def __init__(self, args, case: Case, rep: int, pids: list[int]):
        self.procs: list[subprocess.Popen] = []
        self.stat_file = None
        self.record_file = None
        if not pids:
            return
        plist = ",".join(map(str, pids))
        if args.perf_stat:
            fd, self.stat_file = tempfile.mkstemp(prefix="perf-stat-", suffix=".csv")
            os.close(fd)
            self.procs.append(subprocess.Popen(
                ["perf", "stat", "-x", ",", "-o", self.stat_file, "-e", ",".join(PERF_EVENTS),
                 "-p", plist], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if args.perf_record and (not args.perf_cases or case.name in args.perf_cases):
            os.makedirs(args.perf_record, exist_ok=True)
            self.record_file = os.path.join(args.perf_record, f"{case.name}-{rep}.data")
            self.procs.append(subprocess.Popen(
                ["perf", "record", "-F", str(args.perf_freq), "--call-graph", args.perf_callgraph,
                 "-o", self.record_file, "-p", plist], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        if self.procs:
            time.sleep(0.3)  # let perf attach before the measured run starts

    def stop(self) -> dict:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        counts: dict[str, float] = {}
        if self.stat_file:
            with open(self.stat_file) as f:
                for line in f:
                    cols = line.strip().split(",")
                    if len(cols) >= 3 and cols[0] and cols[0][0].isdigit():
                        counts[cols[2]] = float(cols[0])
            os.unlink(self.stat_file)
        return counts


# ----------------------------------------------------------------------------------------
# One run of one case


def run_case(case: Case, origin: Origin, args, workdir: str, rep: int = 1) -> dict:
    rec: dict = {"case": case.name, "started": time.strftime("%H:%M:%S"), "flags": []}
    with contextlib.ExitStack() as stack:
        sinks = []
        # nginx's mirror module needs an HTTP answer to every mirrored request; grelay's
        # mirrors are L4 and need none (--grelay-sink http204 gives them the same sink).
        mode = args.grelay_sink if case.is_grelay else "http204"
        batch = args.sink_batch_us if mode == "discard" else 0
        for _ in range(case.mirrors):
            sinks.append(Sink(args.sink, mode, args.pin.get("sink"), batch))
            stack.callback(sinks[-1].stop)
        if case.stall:
            sinks.append(Sink(args.sink, "stall", args.pin.get("sink")))
            stack.callback(sinks[-1].stop)
        proxy = Proxy(case, origin, sinks, args, workdir)
        stack.callback(proxy.stop)
        if case.warmup and args.warmup > 0:
            run_wrk(args, proxy.url, args.warmup, case.pad)
        sink0 = [s.stats() for s in sinks]
        metrics0 = proxy.metrics()
        proxy_pids, origin_pids = proxy.pids, origin.pids
        perf = PerfAttach(args, case, rep, proxy_pids) if args.perf_stat or args.perf_record \
            else None
        busy0 = machine_busy_seconds()
        cpu0, ocpu0 = cpu_seconds(proxy_pids), cpu_seconds(origin_pids)
        scpu0 = cpu_seconds([s.proc.pid for s in sinks])
        wrk = run_wrk(args, proxy.url, args.duration, case.pad)
        perf_counts = perf.stop() if perf else {}
        cpu1, ocpu1 = cpu_seconds(proxy_pids), cpu_seconds(origin_pids)
        scpu1 = cpu_seconds([s.proc.pid for s in sinks])
        busy1 = machine_busy_seconds()
        if sinks:
            time.sleep(0.2)  # let mirrors receive what was relayed just before wrk stopped
        sink1 = [s.stats() for s in sinks]
        metrics = proxy.metrics()
        alive = proxy.alive()
        log_tail = proxy.log_tail() if not alive else ""

    secs = wrk["duration_us"] / 1e6
    lat = wrk["latency_us"]
    rec.update({
        "requests": wrk["requests"],
        "duration_s": round(secs, 3),
        "bytes": wrk["bytes"],
        "rps": wrk["requests"] / secs if secs else 0.0,
        "mbps": wrk["bytes"] / secs / 1e6 if secs else 0.0,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
        "errors": wrk["errors"],
        "proxy_cpu_s": round(cpu1 - cpu0, 2) if case.proxy != "direct" else None,
        "origin_cpu_s": round(ocpu1 - ocpu0, 2),
        "sink_cpu_s": round(scpu1 - scpu0, 2),
        "wrk_cpu_s": round(wrk["wrk_cpu_s"], 2),
        "machine_busy_s": round(busy1 - busy0, 2),
    })
    ours = (rec["proxy_cpu_s"] or 0) + rec["origin_cpu_s"] + rec["sink_cpu_s"] + rec["wrk_cpu_s"]
    rec["foreign_cpu_s"] = round(max(0.0, rec["machine_busy_s"] - ours), 2)
    if rec["proxy_cpu_s"] is not None and wrk["requests"]:
        rec["proxy_cpu_us_per_req"] = rec["proxy_cpu_s"] / wrk["requests"] * 1e6
    if wrk["requests"]:
        rec["total_cpu_us_per_req"] = ours / wrk["requests"] * 1e6
    if perf_counts and wrk["requests"]:
        rec["perf_per_request"] = {k: v / wrk["requests"] for k, v in perf_counts.items()}

    # Correctness.
    e = wrk["errors"]
    sock = e["connect"] + e["read"] + e["write"] + e["timeout"]
    if sock:
        rec["flags"].append(f"socket errors: connect {e['connect']}, read {e['read']}, "
                            f"write {e['write']}, timeout {e['timeout']}")
    if e["status"]:
        rec["flags"].append(f"{e['status']} non-2xx/3xx responses")
    if wrk["requests"] == 0:
        rec["flags"].append("no request completed")
    else:
        expect = origin.response_len[case.size]
        # Responses still in flight at the end add at most one response per connection.
        slack = args.connections * expect + 0.005 * wrk["bytes"]
        if not (wrk["requests"] * expect - 1 <= wrk["bytes"] <= wrk["requests"] * expect + slack):
            rec["flags"].append(f"response bytes off: {wrk['bytes']} bytes for "
                                f"{wrk['requests']} responses of {expect}")
    if not alive:
        rec["flags"].append("proxy exited during the run: " + log_tail.strip()[-300:])
    if sinks:
        got = [b.get("requests", 0) - a.get("requests", 0) for a, b in zip(sink0, sink1)]
        rec["mirror_requests"] = got
        healthy = got[:case.mirrors]
        if any(g < wrk["requests"] - args.connections for g in healthy):
            rec["flags"].append(f"a healthy mirror missed requests: got {healthy} of "
                                f"{wrk['requests']}")
    rec["notes"] = []
    if metrics:
        metrics = {k: v - metrics0.get(k, 0) if k != "error" else v for k, v in metrics.items()}
        if case.stall:
            rec["mirror_cuts"] = metrics.get("grelay_mirror_cuts_total", 0)
        keep = ("grelay_mirror_cuts_total", "grelay_mirror_dropped_bytes_total",
                "grelay_mirror_connect_errors_total", "grelay_tap_bytes_total",
                "grelay_tap_dropped_bytes_total", "grelay_tap_errors_total",
                "grelay_session_resets_total", "grelay_connections_total", "error")
        rec["grelay_metrics"] = {k: v for k, v in metrics.items() if k in keep}
        if case.mirrors and not case.stall and metrics.get("grelay_mirror_cuts_total", 0):
            rec["flags"].append(f"healthy mirror cut {metrics['grelay_mirror_cuts_total']:g} times")
        if case.tap and metrics.get("grelay_tap_dropped_bytes_total", 0):
            rec["flags"].append(f"tap dropped {metrics['grelay_tap_dropped_bytes_total']:g} bytes")
    return rec


# ----------------------------------------------------------------------------------------
# Summaries, targets, outputs


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict]) -> dict:
    out = {}
    for key in ("rps", "mbps", "p50_ms", "p90_ms", "p99_ms", "proxy_cpu_s", "proxy_cpu_us_per_req",
                "total_cpu_us_per_req", "origin_cpu_s", "foreign_cpu_s"):
        out[key] = median(r.get(key) for r in runs)
    rps = [r["rps"] for r in runs]
    out["rps_min"], out["rps_max"] = min(rps), max(rps)
    perf_keys = sorted({k for r in runs for k in r.get("perf_per_request", {})})
    if perf_keys:
        out["perf_per_request"] = {k: median(r.get("perf_per_request", {}).get(k) for r in runs)
                                   for k in perf_keys}
    out["reps"] = len(runs)
    out["flags"] = sorted({f for r in runs for f in r["flags"]})
    out["notes"] = sorted({n for r in runs for n in r.get("notes", [])})
    cuts = [r["mirror_cuts"] for r in runs if "mirror_cuts" in r]
    if cuts:
        out["notes"].append(f"stalled mirror cut in {median(cuts):g} sessions per run")
    out["errored_runs"] = sum(1 for r in runs if r["flags"])
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def add_ratios(summary: dict) -> None:
    for name, s in summary.items():
        case = CASE_BY_NAME[name]
        d = summary.get(case.direct)
        s["vs_direct"] = ratio(s["rps"], d["rps"]) if d else None
        peers = [summary[p]["rps"] for p in case.peers if p in summary]
        s["best_peer"] = None
        if peers:
            best = max((p for p in case.peers if p in summary), key=lambda p: summary[p]["rps"])
            s["best_peer"] = best
        s["vs_best_peer"] = ratio(s["rps"], max(peers)) if peers else None
        base = summary.get(case.own_base) if case.own_base else None
        s["vs_no_mirror"] = ratio(s["rps"], base["rps"]) if base else None


def paired_ratio(runs: dict, a: str, b: str, key: str):
    """Median over repetitions of a's value ÷ b's value in the same repetition: runs of one
    repetition are minutes apart at most, so slow drift in the machine's load cancels."""
    ra = {r["rep"]: r.get(key) for r in runs.get(a, [])}
    rb = {r["rep"]: r.get(key) for r in runs.get(b, [])}
    vals = [ra[i] / rb[i] for i in ra if i in rb and ra[i] is not None and rb[i]]
    return statistics.median(vals) if vals else None


def evaluate_targets(summary: dict, runs: dict) -> list[dict]:
    def get(name, key):
        return summary[name][key] if name in summary else None

    targets = []

    def target(tid, text, a, b, key, goal, higher_is_better=True):
        value = paired_ratio(runs, a, b, key) if a in summary and b in summary else None
        met = None
        if value is not None:
            met = value >= goal if higher_is_better else value <= goal
        fmt = fmt_ms if key.endswith("_ms") else (lambda v: fmt_num(v) + (
            " MB/s" if key == "mbps" else " req/s"))
        detail = f"`{a}` {fmt(get(a, key))} vs `{b}` {fmt(get(b, key))}"
        ca, cb = get(a, "proxy_cpu_us_per_req"), get(b, "proxy_cpu_us_per_req")
        if ca is not None and cb is not None:
            detail += f"; proxy CPU {ca:.1f} vs {cb:.1f} µs/request"
        # If the cores are the bottleneck, throughput ∝ 1 / (CPU of every process per request).
        ta, tb = get(a, "total_cpu_us_per_req"), get(b, "total_cpu_us_per_req")
        model = ratio(tb, ta) if key != "p99_ms" else None
        if model is not None:
            detail += f"; CPU-bound model {model:.2f}×"
        targets.append({"id": tid, "target": text, "value": value, "goal": goal, "met": met,
                        "detail": detail, "ratio_of_medians": ratio(get(a, key), get(b, key)),
                        "cpu_model": model})

    peers = [p for p in L4_PEERS["100b"] if p in summary]
    best = max(peers, key=lambda p: summary[p]["rps"]) if peers else "nginx_stream_100b"
    target("relay_100b", "grelay ≥ 1.2× the best peer in req/s, 100-byte responses",
           "grelay_100b", best, "rps", 1.2)
    target("relay_1m", "grelay ≥ 95% of direct, 1 MiB responses", "grelay_1m", "direct_1m",
           "mbps", 0.95)
    target("mirror2_tap", "grelay with 2 mirrors + tap ≥ 85% of its own no-mirror req/s",
           "grelay_mirror2_tap", "grelay_100b", "rps", 0.85)
    target("stall_p99", "with a stalled mirror, the primary's p99 ≤ 1.1× the no-mirror p99",
           "grelay_stall", "grelay_4k", "p99_ms", 1.1, higher_is_better=False)
    return targets


def fmt_num(v, digits=0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_ms(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f} ms" if v < 100 else f"{v:,.0f} ms"


def fmt_ratio(v) -> str:
    return "–" if v is None else f"{v:.2f}×"


def version_of(cmd, pattern: str, prefix: str) -> str:
    if not shutil.which(cmd[0]):
        return f"{cmd[0]} not installed"
    m = re.search(pattern, run_text(cmd))
    return prefix + (m.group(1) if m else "unknown")


def machine_info(args) -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    features = run_text([args.grelay, "--features"])
    path = re.search(r"relay path chosen by auto:\s*(\S+)", features)
    # The source the binary was built from: $GRELAY_SOURCE (e.g. "git abc1234") when the
    # binary was not built from this checkout, else this checkout's HEAD.
    source = os.environ.get("GRELAY_SOURCE", "")
    if not source:
        git = run_text(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
        dirty = run_text(["git", "-C", REPO, "status", "--porcelain", "--", "relay", "proxy",
                          "config", "metrics", "CMakeLists.txt"])
        source = f"git {git}" + (", engine files modified" if dirty else "")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "nginx": run_text(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": version_of(["haproxy", "-v"], r"HAProxy version (\S+)", "HAProxy "),
        "wrk": version_of(["wrk", "-v"], r"wrk (?:debian/)?(\S+)", "wrk "),
        "grelay": run_text([args.grelay, "--version"]).splitlines()[0]
        + f" ({source})",
        "grelay_binary": args.grelay,
        "grelay_relay_path": path.group(1) if path else "unknown",
    }


README = os.path.join(HERE, "README.md")
RESULTS_BEGIN = "<!-- results:begin (written by bench.py) -->"
RESULTS_END = "<!-- results:end -->"


def update_readme(md: str) -> bool:
    """Replaces the results section of bench/README.md (between the markers)."""
    try:
        with open(README) as f:
            text = f.read()
    except OSError:
        return False
    a, b = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if a < 0 or b < a:
        return False
    text = text[:a + len(RESULTS_BEGIN)] + "\n" + md.rstrip() + "\n" + text[b:]
    with open(README, "w") as f:
        f.write(text)
    return True


def write_outputs(prefix: str, doc: dict, plot: bool) -> None:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(prefix + ".md", "w") as f:
        f.write(markdown(doc, os.path.basename(prefix) + ".png" if plot else None))
    if os.path.abspath(prefix) == os.path.join(RESULTS, "latest") and update_readme(
            markdown(doc, "results/latest.png" if plot else None, heading=False)):
        log("updated the results section of bench/README.md")
    if plot:
        gnuplot(prefix, doc)


def markdown(doc: dict, png: str | None, heading: bool = True) -> str:
    m, s, summary = doc["machine"], doc["settings"], doc["summary"]
    when = f"{doc['finished'][:16].replace('T', ' ')} UTC"
    out = [f"## Results ({when})" if heading else f"Measured {when}.", ""]
    out.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel "
               f"{m['kernel']}; nginx {m['nginx']}, {m['haproxy']}, {m['wrk']}, "
               f"{m['grelay']}, relay path `{m['grelay_relay_path']}`.")
    out.append("")
    pin = ", ".join(f"{k} on CPU {v}" for k, v in s["pin"].items()) or "none"
    out.append(f"wrk -t{s['threads']} -c{s['connections']} -d{s['duration_s']:g}s "
               f"--timeout {s['timeout_s']:g}s; {s['reps']} repetitions per case, interleaved, "
               f"medians shown (req/s min–max across repetitions); warm-up "
               f"{s['warmup_s']:g}s per run; pinning: {pin}; priority: "
               f"{s.get('priority', 'default')}. Load average before/after: "
               f"{doc['load_before']} / {doc['load_after']}; CPU used by other processes "
               f"during the runs (median per run): {fmt_num(doc['foreign_cpu_s_median'], 2)} s "
               f"of {s['duration_s'] * m['cores']:g} CPU-s available.")
    avail = s["duration_s"] * (m.get("cores") or 1)
    if doc["foreign_cpu_s_median"] and doc["foreign_cpu_s_median"] > 0.25 * avail:
        out += ["", f"⚠ **Busy machine**: other processes used "
                f"{doc['foreign_cpu_s_median'] / avail:.0%} of the CPU during a median run, so "
                "req/s are low and spread out and p99s mostly measure the scheduler; the CPU "
                "µs/req column (the proxy's own cost) is the steadiest number here."]
    out.append("")
    sections = []
    for c in CASES:
        if c.name in summary and c.section not in sections:
            sections.append(c.section)
    for sec in sections:
        out += [f"### {sec}", "",
                "| case | req/s (min–max) | MB/s | p50 | p99 | proxy CPU s | CPU µs/req "
                "| vs direct | vs best peer | vs 0 mirrors | errors |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
        for c in CASES:
            if c.name not in summary or c.section != sec:
                continue
            r = summary[c.name]
            label = f"**{c.title}**" if c.is_grelay else c.title
            size = "" if sec != RELAY else f", {SIZE_TEXT[c.size]}"
            cpu = "–" if r["proxy_cpu_s"] is None else f"{r['proxy_cpu_s']:.2f}"
            per = "–" if r["proxy_cpu_us_per_req"] is None else f"{r['proxy_cpu_us_per_req']:.1f}"
            peer = fmt_ratio(r["vs_best_peer"])
            if r["best_peer"] and r["best_peer"] != c.name and r["vs_best_peer"] is not None:
                peer += f" ({CASE_BY_NAME[r['best_peer']].title.split(',')[0]})"
            errs = "; ".join(r["flags"]) if r["flags"] else "none"
            if r["flags"]:
                errs = f"⚠ {r['errored_runs']}/{r['reps']} runs: {errs}"
            if r.get("notes"):
                errs += " (" + ", ".join(r["notes"]) + ")"
            out.append(f"| {label}{size} (`{c.name}`) | {fmt_num(r['rps'])} "
                       f"({fmt_num(r['rps_min'])}–{fmt_num(r['rps_max'])}) | "
                       f"{fmt_num(r['mbps'], 1)} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | "
                       f"{cpu} | {per} | {fmt_ratio(r['vs_direct'])} | {peer} | "
                       f"{fmt_ratio(r['vs_no_mirror'])} | {errs} |")
        out.append("")
    perf_rows = [(c, summary[c.name]["perf_per_request"]) for c in CASES
                 if c.name in summary and summary[c.name].get("perf_per_request")]
    if perf_rows:
        out += ["### Per request, in the proxy process (perf stat; medians)", "",
                "| case | syscalls | io_uring SQEs | CQEs | poll arms | io-wq punts "
                "| context switches | CPU µs (task-clock) |",
                "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for c, pr in perf_rows:
            def g(k):
                v = pr.get(k)
                return "–" if v is None else f"{v:.2f}"
            tc = pr.get("task-clock")
            out.append(f"| `{c.name}` | {g('raw_syscalls:sys_enter')} | "
                       f"{g('io_uring:io_uring_submit_req')} | {g('io_uring:io_uring_complete')} | "
                       f"{g('io_uring:io_uring_poll_arm')} | "
                       f"{g('io_uring:io_uring_queue_async_work')} | {g('context-switches')} | "
                       f"{'–' if tc is None else f'{tc * 1000:.1f}'} |")
        out.append("")
    if doc["targets"]:
        out += ["### Targets", "",
                "Ratios are paired: the median over repetitions of the two cases' ratio "
                "within one repetition. The CPU-bound model divides the CPU every process of "
                "the bench (wrk, origin, proxy, sinks) spent per request in the two cases: the "
                "ratio to expect when the 2 cores are the bottleneck, steadier than req/s on "
                "a busy machine.", "",
                "| target | measured | met? |", "|---|---|---|"]
        for t in doc["targets"]:
            met = {True: "**yes**", False: "**no**", None: "not measured"}[t["met"]]
            val = "–" if t["value"] is None else f"{t['value']:.2f}× ({t['detail']})"
            out.append(f"| {t['target']} | {val} | {met} |")
        out.append("")
    if png:
        out += [f"![req/s and MB/s per case]({png})", ""]
    return "\n".join(out)


def gnuplot(prefix: str, doc: dict) -> None:
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no plot")
        return
    rows = [(c.name, doc["summary"][c.name]) for c in CASES if c.name in doc["summary"]]
    dat = prefix + ".dat"
    with open(dat, "w") as f:
        for i, (name, r) in enumerate(rows):
            color = "0x2a9d8f" if CASE_BY_NAME[name].is_grelay else "0x8d99ae"
            f.write(f"{i} \"{name}\" {max(r['rps'], 0.1):.1f} {max(r['mbps'], 0.01):.2f} {color}\n")
    script = f"""
set terminal pngcairo size 1400,900 font ",10"
set output "{prefix}.png"
set multiplot layout 2,1 title "grelay bench ({doc['machine']['cores']} cores, loopback, wrk -t{doc['settings']['threads']} -c{doc['settings']['connections']} -d{doc['settings']['duration_s']:g}s; medians of {doc['settings']['reps']}; grelay in green)"
set style fill solid 0.85 border -1
set boxwidth 0.7
set grid ytics
set logscale y
set xtics rotate by -35 left noenhanced
set xrange [-0.6:{len(rows) - 0.4}]
set bmargin 7
unset key
set ylabel "req/s (log)"
plot "{dat}" using 1:3:5:xtic(2) with boxes lc rgb variable, \\
     "" using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7 font ",8"
set ylabel "MB/s (log)"
plot "{dat}" using 1:4:5:xtic(2) with boxes lc rgb variable, \\
     "" using 1:4:(sprintf("%.1f", $4)) with labels offset 0,0.7 font ",8"
unset multiplot
"""
    p = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if p.returncode != 0:
        log(f"gnuplot failed: {p.stderr.strip()}")
    os.unlink(dat)


# ----------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grelay", default=os.environ.get("GRELAY_BIN", ""),
                   help="grelay binary (default $GRELAY_BIN)")
    p.add_argument("--sink", default=os.environ.get("BENCH_SINK", ""),
                   help="bench-sink binary (default $BENCH_SINK)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 repetition, 3 s runs, output to "
                        "bench/results/tmp/quick.*")
    p.add_argument("--cases", default="",
                   help="comma-separated case names or prefixes (default: all); --list shows them")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--reps", type=int, help="repetitions per case (default 3; --quick 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; --quick 3)")
    p.add_argument("--warmup", type=int, help="seconds of wrk before each run (default 1)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--timeout", type=int, default=2.0, help="wrk --timeout seconds (default 2)")
    p.add_argument("--pin", default="none",
                   help="CPU pinning with taskset: 'none' (default) or e.g. "
                        "'wrk=0,proxy=1,origin=0,sink=0'")
    p.add_argument("--nice", type=int, default=0,
                   help="run wrk, the origin, the proxies and the sinks at this nice level "
                        "(e.g. -10 on a machine busy with other work; default 0)")
    p.add_argument("--origin-sendfile", choices=("on", "off"), default="on",
                   help="the origin nginx's sendfile (default on, as in Debian's nginx.conf)")
    p.add_argument("--out", help="output prefix (default bench/results/latest for a full run, "
                                 "bench/results/tmp/{quick,partial} otherwise)")
    p.add_argument("--no-plot", action="store_true", help="skip the gnuplot PNG")
    p.add_argument("--compare", metavar="BIN",
                   help="A/B: also run every selected grelay case with this other grelay binary "
                        "(cases NAME@b, interleaved with the others)")
    p.add_argument("--grelay-server", action="append", default=[], metavar="KEY=VALUE",
                   help='an extra [server] line for grelay, e.g. chunk_size="256KiB" (repeatable)')
    p.add_argument("--grelay-sink", choices=("discard", "http204"), default="discard",
                   help="what grelay's healthy mirrors are: sinks that read and discard "
                        "(default) or answer each request with 204 like nginx's mirrors need")
    p.add_argument("--sink-batch-us", type=int, default=1000,
                   help="discard sinks sleep this long between rounds of reading, so one wakeup "
                        "drains several requests (default 1000; 0 = wake per request)")
    p.add_argument("--perf-stat", action="store_true",
                   help="count syscalls, io_uring SQEs/CQEs, context switches of the proxy per "
                        "request with perf stat (adds some overhead)")
    p.add_argument("--perf-record", metavar="DIR",
                   help="perf record the proxy during each measured run into DIR/CASE-REP.data")
    p.add_argument("--perf-cases", default="", help="only these cases for --perf-record")
    p.add_argument("--perf-freq", type=int, default=499, help="perf record -F (default 499)")
    p.add_argument("--perf-callgraph", default="dwarf,16384",
                   help="perf record --call-graph (default dwarf,16384)")
    p.add_argument("--nginx-stream-module", default="/usr/lib/nginx/modules/ngx_stream_module.so")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    # wrk takes whole seconds.
    args.duration = max(1, round(args.duration or (3 if args.quick else 10)))
    args.warmup = max(0, round(args.warmup if args.warmup is not None else 1))
    args.timeout = max(1, round(args.timeout))
    # Only a full run (every case, not --quick) replaces results/latest.* and the README's
    # results; anything else goes to results/tmp/ (ignored by git).
    if not args.out:
        partial = args.quick or args.cases or args.compare
        args.out = os.path.join(RESULTS, "tmp/quick" if args.quick else
                                "tmp/partial" if partial else "latest")
    args.pin_spec, args.pin = args.pin, {}
    args.perf_cases = [c for c in args.perf_cases.split(",") if c]
    return p, args


def add_variants(binary: str) -> None:
    """--compare: a twin "NAME@b" of every grelay case, run with `binary`, listed next to it."""
    out = []
    for c in CASES:
        out.append(c)
        if c.is_grelay:
            base = c.own_base + "@b" if CASE_BY_NAME.get(c.own_base, c).is_grelay else c.own_base
            out.append(dataclasses.replace(c, name=c.name + "@b", title=c.title + " [B]",
                                           binary=binary, own_base=base))
    CASES[:] = out
    CASE_BY_NAME.clear()
    CASE_BY_NAME.update({c.name: c for c in CASES})


def select_cases(spec: str) -> list[Case]:
    if not spec:
        return list(CASES)
    chosen = []
    for part in spec.split(","):
        part = part.strip()
        hits = [c for c in CASES if c.name in (part, part + "@b")] or \
            [c for c in CASES if c.name.startswith(part)]
        if not hits:
            raise ValueError(f"unknown case {part!r}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in CASES if c in chosen]  # keep the canonical order


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    pin_spec = args.pin_spec
    priority = ""
    if args.nice:
        try:
            priority = set_priority(args.nice)
        except OSError as e:
            parser.error(f"--nice {args.nice}: {e}")
    if pin_spec != "none":
        for item in pin_spec.split(","):
            role, _, cpus = item.partition("=")
            if role not in ("wrk", "proxy", "origin", "sink") or not cpus:
                parser.error(f"bad --pin item {item!r}")
            args.pin[role] = cpus
    if args.compare:
        if not os.access(args.compare, os.X_OK):
            parser.error(f"--compare: not an executable: {args.compare}")
        add_variants(os.path.abspath(args.compare))
    if args.list:
        for c in CASES:
            print(f"{c.name:22} {c.title}, {SIZE_TEXT[c.size]}")
        return 0
    try:
        cases = select_cases(args.cases)
    except ValueError as e:
        parser.error(str(e))
    if any(c.is_grelay for c in cases) and not (args.grelay and os.access(args.grelay, os.X_OK)):
        parser.error("no grelay binary: pass --grelay or set GRELAY_BIN")
    if any(c.mirrors or c.stall for c in cases) and not (args.sink and os.access(args.sink, os.X_OK)):
        parser.error("no bench-sink binary: pass --sink or set BENCH_SINK")
    for tool in ("wrk", "nginx", "taskset") + (("haproxy",) if any(
            c.proxy == "haproxy" for c in cases) else ()):
        if not shutil.which(tool):
            parser.error(f"{tool} is not installed (bench/run.sh installs it)")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = load_average()
    machine = machine_info(args) if args.grelay else {}
    total = len(cases) * args.reps * (args.duration + args.warmup + 0.5)
    log(f"{len(cases)} cases × {args.reps} repetitions × {args.duration:g}s "
        f"(about {total / 60:.0f} min); load average {load_before}")
    runs: dict[str, list[dict]] = {c.name: [] for c in cases}
    failures = []
    workdir = tempfile.mkdtemp(prefix="grelay-bench-")
    origin = None
    try:
        origin = Origin(workdir, args.pin.get("origin"), args.origin_sendfile == "on")
        for rep in range(1, args.reps + 1):
            for case in cases:
                try:
                    rec = run_case(case, origin, args, workdir, rep)
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    failures.append(f"{case.name} repetition {rep}: {e}")
                    log(f"FAILED {case.name} #{rep}: {e}")
                    continue
                rec["rep"] = rep
                runs[case.name].append(rec)
                cpu = "" if rec["proxy_cpu_s"] is None else f", proxy CPU {rec['proxy_cpu_s']:.2f}s"
                log(f"{case.name:20} #{rep}: {rec['rps']:10,.0f} req/s {rec['mbps']:8.1f} MB/s "
                    f"p50 {rec['p50_ms']:.2f} ms p99 {rec['p99_ms']:.2f} ms{cpu}, "
                    f"other load {rec['foreign_cpu_s']:.1f} CPU-s"
                    + (f"  ⚠ {'; '.join(rec['flags'])}" if rec["flags"] else ""))
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        if origin:
            origin.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if args.nice:
            with contextlib.suppress(OSError):
                set_priority(0)

    summary = {name: summarize(rs) for name, rs in runs.items() if rs}
    add_ratios(summary)
    foreign = [r["foreign_cpu_s"] for rs in runs.values() for r in rs]
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {"threads": args.threads, "connections": args.connections,
                     "duration_s": args.duration, "timeout_s": args.timeout,
                     "warmup_s": args.warmup, "reps": args.reps, "pin": args.pin,
                     "priority": priority or "default",
                     "origin_sendfile": args.origin_sendfile,
                     "nginx_mirror_timeout": NGINX_MIRROR_TIMEOUT,
                     "grelay_mirror_sink": args.grelay_sink,
                     "sink_batch_us": args.sink_batch_us,
                     "grelay_server_extra": args.grelay_server,
                     "compare_binary": args.compare,
                     "quick": args.quick},
        "load_before": load_before,
        "load_after": load_average(),
        "foreign_cpu_s_median": median(foreign),
        "summary": summary,
        "targets": evaluate_targets(summary, runs) if summary else [],
        "failures": failures,
        "runs": runs,
    }
    write_outputs(args.out, doc, plot=not args.no_plot)
    print(markdown(doc, None))
    log(f"wrote {args.out}.json, {args.out}.md" + ("" if args.no_plot else f", {args.out}.png"))

    bad = list(failures)
    for name, s in summary.items():
        if CASE_BY_NAME[name].is_grelay and s["flags"]:
            bad.append(f"{name}: {'; '.join(s['flags'])}")
    missing = [c.name for c in cases if not runs[c.name]]
    if missing:
        bad.append(f"no completed run for {', '.join(missing)}")
    for b in bad:
        log(f"ERROR {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
