#!/usr/bin/env python3
"""The in-VM fan-out benchmark (bench/fanout/README.md).

  fanout.py run --bin-dir DIR --grelay BIN --out PREFIX [options]   (inside the VM)
  fanout.py report RAW.json --out PREFIX                             (anywhere)

`run` measures every case (relay x chunk size x targets) in turn, repetitions
interleaved, and writes PREFIX.json (every run, medians, ratios, the verdict) and
PREFIX.md (the tables). `report` re-renders both from a PREFIX.json.

Per run: a fresh relay process; one client (fanout-source) streams BYTES into it; the
relay sends them to 1..4 targets (fanout-sink, discarding) and writes them to a tap file on
tmpfs. Measured: the relay process's CPU time (utime + stime of the whole thread group,
io-wq workers included) from just before the client connects until every target has
everything; the VM's busy CPU time over the same window; the wall time from connect to the
last target's EOF.
"""

import argparse
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

GIB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")

LISTEN_PORT = 19100
ADMIN_PORT = 19200
SINK_PORTS = [19001, 19002, 19003, 19004]
TAP_ROOT = "/dev/shm/fanout"
SCRATCH = "/tmp/fanout"

RELAYS = ["group", "mainline", "copy", "splice", "readwrite"]
RELAY_NAMES = {
    "group": "grelay group",
    "mainline": "grelay mainline",
    "copy": "grelay copy",
    "splice": "splice+tee",
    "readwrite": "read/write",
}
GRELAY_RELAYS = ("group", "mainline", "copy")
CHUNKS = [65536, 4096]
TARGETS = [1, 2, 3, 4]
# Issue 10's target, at 3 targets and 64 KiB chunks.
TARGET_CASE = (65536, 3)
TARGET_VS_MAINLINE = 0.6


def chunkLabel(chunk):
    return f"{chunk // 1024} KiB"


# ------------------------------------------------------------------------------------------
# measuring


def processCpu(pid):
    """CPU time of a thread group (live and exited threads, io-wq workers included), seconds.

    The process's CPU-time clock (clock_gettime on MAKE_PROCESS_CPUCLOCK(pid, SCHED)): the
    scheduler's sum_exec_runtime, in ns, where /proc/PID/stat has 10 ms ticks."""
    return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9


def quiesce(pid, timeout=60.0):
    """Waits until the process has stopped using CPU (its tap writes may still be running in
    io-wq after the targets have everything); returns its CPU time then."""
    deadline = time.monotonic() + timeout
    last = processCpu(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = processCpu(pid)
        if now - last < 0.0005:
            return now
        last = now
    return last


def threadCpu(pid):
    """Per thread name (iou-wrk-123 -> iou-wrk): {name: [cpu_s, context_switches]}, from
    /proc (CPU in 10 ms ticks; threads that exited are missing)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        name = re.sub(r"-\d+$", "", name)
        rest = text.rsplit(")", 1)[1].split()
        switches = sum(int(m) for m in re.findall(r"ctxt_switches:\s+(\d+)", status))
        t = out.setdefault(name, [0.0, 0])
        t[0] += (int(rest[11]) + int(rest[12])) / CLK_TCK
        t[1] += switches
    return out


def vmBusy():
    """Busy CPU seconds of the whole VM (every CPU, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest and guest_nice are already in user and nice
    return (sum(fields[:8]) - idle) / CLK_TCK


def listening(port):
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def waitListening(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if listening(port):
            return True
        time.sleep(0.05)
    return False


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("grelay_"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def metric(metrics, name, **labels):
    total = 0.0
    for key, value in metrics.items():
        if not key.startswith(name + "{") and key != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


# ------------------------------------------------------------------------------------------
# relays


def bufferPool(chunk):
    """grelay's buffer_pool in the benchmark, also the warm-up stream's size."""
    return 32 << 20 if chunk >= 65536 else 4 << 20


def grelayConfig(relay, chunk, targets, tapDir, bytes_, tap):
    mirrors = ""
    for i in range(1, targets):
        mirrors += f"""
  [[listener.mirror]]
  name = "m{i}"
  address = "127.0.0.1:{SINK_PORTS[i]}"
"""
    tapSize = max(64 << 20, 2 * (bytes_ + bufferPool(chunk)))
    return f"""# generated by bench/fanout/fanout.py
[server]
workers = 1
relay_path = "{relay}"
chunk_size = "{chunk}"
drain_timeout = "2s"
buffer_pool = "{bufferPool(chunk)}"
# the paths under test only: a direction with nothing to fan out (1 target, no tap)
# would otherwise switch to splice(2) on the mainline and copy paths
splice = false

[admin]
listen = "127.0.0.1:{ADMIN_PORT}"

[upstream.primary]
servers = ["127.0.0.1:{SINK_PORTS[0]}"]

[[listener]]
name = "bench"
listen = "127.0.0.1:{LISTEN_PORT}"
upstream = "primary"
{mirrors}
""" + (f"""
  [listener.tap]
  path = "{tapDir}"
  max_size = "{tapSize}"
  max_lag = "48MiB"
""" if tap else "")


class Relay:
    def __init__(self, args, relay, chunk, targets, bytes_, logPath):
        self.relay = relay
        self.chunk = chunk
        self.targets = targets
        self.tapDir = os.path.join(TAP_ROOT, "tap")
        os.makedirs(self.tapDir, exist_ok=True)
        self.log = open(logPath, "w")
        if relay in GRELAY_RELAYS:
            cfg = os.path.join(SCRATCH, "grelay.toml")
            with open(cfg, "w") as f:
                f.write(grelayConfig(relay, chunk, targets, self.tapDir, bytes_, args.tap))
            cmd = [args.grelay, "-c", cfg]
        else:
            mode = "splice" if relay == "splice" else "copy"
            cmd = [os.path.join(args.bin_dir, "fanout-relay"), mode, str(LISTEN_PORT), str(chunk),
                   os.path.join(self.tapDir, "tap") if args.tap else "-"] + \
                [str(p) for p in SINK_PORTS[:targets]]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def ready(self):
        return waitListening(LISTEN_PORT, self.proc) and (
            self.relay not in GRELAY_RELAYS or waitListening(ADMIN_PORT, self.proc))

    def tapBytes(self):
        total = 0
        for root, _, files in os.walk(self.tapDir):
            for name in files:
                total += os.path.getsize(os.path.join(root, name))
        return total

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tapDir, ignore_errors=True)


class Sinks:
    def __init__(self, binDir):
        self.proc = subprocess.Popen([os.path.join(binDir, "fanout-sink")] +
                                     [str(p) for p in SINK_PORTS], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines = queue.Queue()
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            raise RuntimeError(f"fanout-sink did not start: {first!r}")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.split())

    def drain(self):
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def wait(self, ports, timeout):
        """One line per port: {port: (bytes, end_ns, error)}; missing ports are left out."""
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(ports):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                parts = self.lines.get(timeout=left)
            except queue.Empty:
                break
            port = int(parts[0])
            if port in ports and port not in got:
                err = int(parts[4]) if len(parts) > 4 else 0
                got[port] = (int(parts[1]), int(parts[2]), err)
        return got

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def stream(args, sinks, ports, bytes_):
    """One client session of bytes_ through the relay: (source line, {port: sink line})."""
    src = subprocess.run([os.path.join(args.bin_dir, "fanout-source"), str(LISTEN_PORT),
                          str(bytes_)], capture_output=True, text=True, timeout=args.timeout)
    got = sinks.wait(ports, timeout=args.timeout)
    return src, got


def checkStream(src, got, ports, bytes_):
    """None, or what went wrong."""
    if src.returncode != 0:
        return f"source failed: {src.stderr.strip()}"
    missing = [p for p in ports if p not in got]
    bad = [p for p in ports if p in got and (got[p][0] != bytes_ or got[p][2] != 0)]
    if missing or bad:
        return f"targets incomplete: missing {missing}, wrong {[(p, got[p]) for p in bad]}"
    return None


def grelayCounters(m):
    return {
        "chunks": {p: metric(m, "grelay_chunks_total", path=p) for p in ("group", "mainline", "copy")},
        "received": metric(m, "grelay_received_bytes_total", direction="request"),
        "mirror_cuts": metric(m, "grelay_mirror_cuts_total"),
        "mirror_dropped": metric(m, "grelay_mirror_dropped_bytes_total"),
        "tap_bytes": metric(m, "grelay_tap_bytes_total"),
        "tap_dropped": metric(m, "grelay_tap_dropped_bytes_total"),
    }


def counterDelta(after, before):
    out = {}
    for k, v in after.items():
        out[k] = counterDelta(v, before[k]) if isinstance(v, dict) else v - before[k]
    return out


def runOne(args, sinks, relay, chunk, targets, bytes_, rep, logPath):
    rec = {"relay": relay, "chunk": chunk, "targets": targets, "rep": rep, "bytes": bytes_,
           "ok": False, "error": None}
    r = Relay(args, relay, chunk, targets, bytes_, logPath)
    isGrelay = relay in GRELAY_RELAYS
    try:
        if not r.ready():
            rec["error"] = "relay did not start (see its log)"
            return rec
        sinks.drain()
        ports = SINK_PORTS[:targets]
        # Warm-up (not measured): a first session touches every buffer of grelay's pool (a
        # page fault and a page clear each), which a running relay has long done.
        warm = bufferPool(chunk)
        src, got = stream(args, sinks, ports, warm)
        err = checkStream(src, got, ports, warm)
        if err is not None:
            rec["error"] = "warm-up: " + err
            return rec
        quiesce(r.pid)
        before = grelayCounters(scrape(ADMIN_PORT)) if isGrelay else None
        tap0 = r.tapBytes()

        perf = None
        if args.perf:
            # The whole VM, call graphs: the relay, its io-wq workers, the client, the sinks.
            perfData = os.path.join(SCRATCH, "perf.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock",
                                     "-o", perfData], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        threads0 = threadCpu(r.pid)
        vm0 = vmBusy()
        cpu0 = processCpu(r.pid)
        sink0 = processCpu(sinks.proc.pid)
        src, got = stream(args, sinks, ports, bytes_)
        sink1 = processCpu(sinks.proc.pid)
        vm1 = vmBusy()
        cpu1 = quiesce(r.pid)
        threads1 = threadCpu(r.pid)
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
            perfReport(args, perfData, relay, chunk, targets, rep)
        err = checkStream(src, got, ports, bytes_)
        if err is not None:
            rec["error"] = err
            return rec
        start, end, _, _, srcCpu = (int(x) for x in src.stdout.split())
        last = max(got[p][1] for p in ports)
        rec["wall_s"] = (max(last, end) - start) / 1e9
        rec["relay_cpu_s"] = cpu1 - cpu0
        rec["vm_cpu_s"] = vm1 - vm0
        rec["source_cpu_s"] = srcCpu / 1e9
        rec["sinks_cpu_s"] = sink1 - sink0
        rec["threads"] = {k: [round(v[0] - threads0.get(k, [0.0, 0])[0], 3),
                              v[1] - threads0.get(k, [0.0, 0])[1]]
                          for k, v in threads1.items() if v[0] - threads0.get(k, [0.0, 0])[0] > 0}
        if isGrelay:
            g = counterDelta(grelayCounters(scrape(ADMIN_PORT)), before)
            rec["grelay"] = g
            problems = []
            if g["mirror_cuts"] or g["mirror_dropped"]:
                problems.append(f"mirror cut ({g['mirror_cuts']:.0f}, "
                                f"{g['mirror_dropped']:.0f} bytes dropped)")
            if args.tap and (g["tap_dropped"] or g["tap_bytes"] != bytes_):
                problems.append(f"tap recorded {g['tap_bytes']:.0f} of {bytes_} bytes")
            # A group session may start with a few mainline chunks while its mirrors connect.
            if g["chunks"].get(relay, 0) < 0.9 * sum(g["chunks"].values()):
                problems.append(f"chunks not on the {relay} path: {g['chunks']}")
            if problems:
                rec["error"] = "; ".join(problems)
                return rec
        elif args.tap and r.tapBytes() - tap0 != bytes_:
            rec["error"] = f"tap file holds {r.tapBytes() - tap0} of {bytes_} new bytes"
            return rec
        rec["ok"] = True
        return rec
    except subprocess.TimeoutExpired:
        rec["error"] = f"timed out after {args.timeout} s"
        return rec
    finally:
        r.stop()


def perfReport(args, data, name, chunk, targets, rep):
    """Writes what perf saw into PERF_DIR/NAME-CHUNK-TARGETS-REP.txt."""
    base = ["perf", "report", "-i", data, "--stdio", "--no-children"]
    byComm = subprocess.run(base + ["--sort", "comm", "-g", "none"], capture_output=True,
                            text=True, timeout=600).stdout
    # The relay's threads: grelay's worker and its io-wq workers (iou-wrk-TID), or fanout-relay.
    comms = sorted({line.split()[1] for line in byComm.splitlines()
                    if re.match(r"\s+[\d.]+%\s+(grelay|iou-wrk-\d+|fanout-relay)\s*$", line)})
    path = os.path.join(args.perf, f"{name}-{chunk // 1024}k-{targets}-{rep + 1}.txt")
    with open(path, "w") as f:
        f.write("===== by process (whole VM)\n" + byComm)
        if comms:
            c = ",".join(comms)
            for title, extra in (
                    (f"the relay ({c}) by thread and symbol, % of the relay's samples",
                     ["--sort", "comm,sym", "-g", "none", "--percent-limit", "0.5"]),
                    (f"the relay ({c}): call graphs, % of the relay's samples",
                     ["--sort", "comm,sym", "-g", "fractal,0.5,callee,function,percent",
                      "--percent-limit", "1.5"])):
                f.write(f"===== {title}\n")
                f.flush()
                subprocess.run(base + ["--comms", c, "--percentage", "relative"] + extra,
                               stdout=f, stderr=subprocess.DEVNULL, timeout=600)
    os.unlink(data)
    # perf's unwinder leaves grelay's user-space frames as bare addresses, "[...]" and
    # empty branches: dropped, the kernel call chains are what the report is for.
    with open(path) as f:
        lines = f.readlines()
    junk = re.compile(r"^[\s|]*(--[\d.]+%--)?(0x[0-9a-f]+|\[\.\.\.\] \(inlined\))?\s*$")
    with open(path, "w") as f:
        f.writelines(line for line in lines if not junk.match(line) or line.strip() == "")


def features(grelay):
    try:
        return subprocess.run([grelay, "--features"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)


def cmdRun(args):
    os.makedirs(SCRATCH, exist_ok=True)
    if args.perf:
        os.makedirs(args.perf, exist_ok=True)
    os.makedirs(TAP_ROOT, exist_ok=True)
    logDir = os.path.join(SCRATCH, "logs")
    os.makedirs(logDir, exist_ok=True)
    feat = features(args.grelay)
    groupOk = re.search(r"^\s*group: available", feat, re.M) is not None
    relays = [r for r in args.relays.split(",") if r]
    if "group" in relays and not groupOk:
        print("fanout: the group path is not available in this kernel:\n" + feat, file=sys.stderr)
        return 1
    chunks = [int(c) for c in args.chunks.split(",")]
    targets = [int(t) for t in args.targets.split(",")]
    sizes = {65536: args.bytes_64k, 4096: args.bytes_4k}
    cases = [(c, t, r) for c in chunks for t in targets for r in relays]
    print(f"fanout: {len(cases)} cases x {args.reps} repetitions, "
          f"{', '.join(f'{chunkLabel(c)}: {sizes.get(c, args.bytes_64k) >> 20} MiB' for c in chunks)}"
          " per run", flush=True)
    sinks = Sinks(args.bin_dir)
    runs = []
    began = time.time()
    try:
        for rep in range(args.reps):
            # Interleaved: every case once per repetition, the paths of one (chunk, targets)
            # back to back, so they share the machine's state of the moment.
            for (chunk, tgt, relay) in cases:
                n = sizes.get(chunk, args.bytes_64k)
                log = os.path.join(logDir, f"{relay}-{chunk}-{tgt}-{rep}.log")
                rec = runOne(args, sinks, relay, chunk, tgt, n, rep, log)
                if not rec["ok"]:
                    try:
                        with open(log) as f:
                            rec["log_tail"] = f.read()[-2000:]
                    except OSError:
                        pass
                runs.append(rec)
                if rec["ok"]:
                    print(f"  rep {rep + 1} {RELAY_NAMES[relay]:16} {chunkLabel(chunk):>6} "
                          f"{tgt} target(s): {rec['relay_cpu_s'] / (n / GIB):8.2f} CPU-s/GiB "
                          f"{n / rec['wall_s'] / 1e6:8.2f} MB/s", flush=True)
                else:
                    print(f"  rep {rep + 1} {RELAY_NAMES[relay]:16} {chunkLabel(chunk):>6} "
                          f"{tgt} target(s): FAILED: {rec['error']}", flush=True)
    finally:
        sinks.stop()
    with open("/proc/sys/kernel/osrelease") as f:
        release = f.read().strip()
    raw = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "duration_s": round(time.time() - began, 1),
            "kernel": release,
            "cpus": os.cpu_count(),
            "features": feat,
            "reps": args.reps,
            "bytes": {str(c): sizes.get(c, args.bytes_64k) for c in chunks},
            "quick": args.quick,
            "clock": args.clock,
            "perf": bool(args.perf),
            "tap": args.tap,
            "grelay": args.grelay,
        },
        "runs": runs,
    }
    write(raw, args.out)
    failed = sum(1 for r in runs if not r["ok"])
    print(f"fanout: {len(runs) - failed} runs ok, {failed} failed; wrote {args.out}.md, "
          f"{args.out}.json", flush=True)
    return 0 if failed == 0 else 1


# ------------------------------------------------------------------------------------------
# report


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(raw):
    runs = [r for r in raw["runs"] if r["ok"]]
    cells = {}
    for r in runs:
        key = (r["relay"], r["chunk"], r["targets"])
        gib = r["bytes"] / GIB
        c = cells.setdefault(key, {"cpu": [], "vm": [], "all": [], "mbps": [], "byRep": {},
                                   "iowq": [], "chunkBytes": []})
        c["cpu"].append(r["relay_cpu_s"] / gib)
        c["vm"].append(r["vm_cpu_s"] / gib)
        c["all"].append((r["relay_cpu_s"] + r["source_cpu_s"] + r["sinks_cpu_s"]) / gib)
        c["mbps"].append(r["bytes"] / r["wall_s"] / 1e6)
        c["byRep"][r["rep"]] = r
        iowq = sum(v[0] for k, v in r.get("threads", {}).items() if k.startswith("iou-wrk"))
        c["iowq"].append(iowq / gib)
        if "grelay" in r:
            n = sum(r["grelay"]["chunks"].values())
            if n:
                c["chunkBytes"].append(r["grelay"]["received"] / n)
    summary = {}
    for key, c in cells.items():
        summary[key] = {
            "cpu_s_per_gib": median(c["cpu"]),
            "vm_cpu_s_per_gib": median(c["vm"]),
            "all_cpu_s_per_gib": median(c["all"]),
            "mb_per_s": median(c["mbps"]),
            "iowq_cpu_s_per_gib": median(c["iowq"]),
            "avg_chunk_bytes": median(c["chunkBytes"]),
            "runs": len(c["cpu"]),
            "cpu_all": [round(x, 3) for x in c["cpu"]],
        }

    def paired(a, b, chunk, tgt, field="relay_cpu_s"):
        """Median over repetitions of a/b measured in the same repetition."""
        ca, cb = cells.get((a, chunk, tgt)), cells.get((b, chunk, tgt))
        if not ca or not cb:
            return None
        ratios = []
        for rep, ra in ca["byRep"].items():
            rb = cb["byRep"].get(rep)
            if rb is None:
                continue
            if field == "mbps":
                x = (ra["bytes"] / ra["wall_s"]) / (rb["bytes"] / rb["wall_s"])
            else:
                x = (ra[field] / ra["bytes"]) / (rb[field] / rb["bytes"])
            ratios.append(x)
        return median(ratios)

    chunks = sorted({k[1] for k in cells}, reverse=True)
    targets = sorted({k[2] for k in cells})
    ratios = {}
    for chunk in chunks:
        for tgt in targets:
            ratios[(chunk, tgt)] = {
                "group/mainline": paired("group", "mainline", chunk, tgt),
                "group/splice": paired("group", "splice", chunk, tgt),
                "group/readwrite": paired("group", "readwrite", chunk, tgt),
                "mainline/splice": paired("mainline", "splice", chunk, tgt),
                "splice/readwrite": paired("splice", "readwrite", chunk, tgt),
                "group/mainline MB/s": paired("group", "mainline", chunk, tgt, "mbps"),
                "group/splice MB/s": paired("group", "splice", chunk, tgt, "mbps"),
            }
    verdict = None
    tc, tt = TARGET_CASE
    rr = ratios.get((tc, tt))
    if rr and rr["group/mainline"] is not None and rr["group/splice"] is not None:
        verdict = {
            "chunk": tc, "targets": tt,
            "group_cpu": summary[("group", tc, tt)]["cpu_s_per_gib"],
            "splice_cpu": summary[("splice", tc, tt)]["cpu_s_per_gib"],
            "mainline_cpu": summary[("mainline", tc, tt)]["cpu_s_per_gib"],
            "group_over_splice": rr["group/splice"],
            "group_over_mainline": rr["group/mainline"],
            "vs_splice_met": rr["group/splice"] <= 1.0,
            "vs_mainline_met": rr["group/mainline"] <= TARGET_VS_MAINLINE,
        }
        verdict["met"] = verdict["vs_splice_met"] and verdict["vs_mainline_met"]
        # The same on client + relay + sinks: on loopback the sinks' TCP receive work is
        # charged to whoever sends while a sink isn't holding its socket, so the relay's
        # share alone moves with timing; the sum doesn't (README.md, "The target").
        whole = {r: summary[(r, tc, tt)]["all_cpu_s_per_gib"]
                 for r in ("group", "splice", "mainline")}
        if all(v for v in whole.values()):
            verdict["whole"] = {
                "group_cpu": whole["group"], "splice_cpu": whole["splice"],
                "mainline_cpu": whole["mainline"],
                "group_over_splice": whole["group"] / whole["splice"],
                "group_over_mainline": whole["group"] / whole["mainline"],
            }
            w = verdict["whole"]
            w["vs_splice_met"] = w["group_over_splice"] <= 1.0
            w["vs_mainline_met"] = w["group_over_mainline"] <= TARGET_VS_MAINLINE
            w["met"] = w["vs_splice_met"] and w["vs_mainline_met"]
    return summary, ratios, verdict, chunks, targets


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def renderMd(raw, summary, ratios, verdict, chunks, targets):
    meta = raw["meta"]
    relays = [r for r in RELAYS if any(k[0] == r for k in summary)]
    out = []
    failed = [r for r in raw["runs"] if not r["ok"]]
    sizes = ", ".join(f"{chunkLabel(int(c))} chunks: {int(b) >> 20} MiB" for c, b in
                      sorted(meta["bytes"].items(), key=lambda kv: -int(kv[0])))
    clock = ("`-icount`: 1 CPU-s = 10⁹ guest instructions" if meta.get("clock") == "icount"
             else "host-timed: CPU-s include host scheduling noise")
    out.append(f"Run {meta['date']}, kernel {meta['kernel']} under qemu TCG ({meta['cpus']} vCPUs, "
               f"{clock}), {meta['reps']} repetitions interleaved, bytes per run: {sizes}; "
               f"{len(raw['runs']) - len(failed)} runs ok, {len(failed)} failed"
               f"{' (quick run)' if meta.get('quick') else ''}. Medians. "
               "**TCG timings only compare the paths with each other** (no KVM: absolute "
               "numbers are meaningless, and a copied byte costs about what an instruction "
               "does, far more than on real hardware).")
    out.append("")
    if verdict and meta.get("tap", True):
        ok = "**met**" if verdict["met"] else "**not met**"
        out.append(f"Target (3 targets + tap, 64 KiB): group relay CPU-s/GiB ≤ splice+tee's and ≤ "
                   f"{TARGET_VS_MAINLINE}× mainline's: {ok} — group/splice+tee "
                   f"{fmt(verdict['group_over_splice'])} "
                   f"({'ok' if verdict['vs_splice_met'] else 'missed'}), group/mainline "
                   f"{fmt(verdict['group_over_mainline'])} "
                   f"({'ok' if verdict['vs_mainline_met'] else 'missed'}).")
        w = verdict.get("whole")
        if w:
            out.append("")
            out.append(f"The same on client + relay + sinks CPU-s/GiB (what the fan-out costs, "
                       f"whoever is charged the loopback TCP work): "
                       f"{'**met**' if w['met'] else '**not met**'} — group/splice+tee "
                       f"{fmt(w['group_over_splice'])} "
                       f"({'ok' if w['vs_splice_met'] else 'missed'}), group/mainline "
                       f"{fmt(w['group_over_mainline'])} "
                       f"({'ok' if w['vs_mainline_met'] else 'missed'}).")
        out.append("")
    for chunk in chunks:
        out.append(f"#### {chunkLabel(chunk)} chunks: relay CPU-s per GiB · MB/s "
                   f"(targets = primary + mirrors{', plus the tap' if meta.get('tap', True) else ', no tap'})")
        out.append("")
        out.append("| relay | " + " | ".join(f"{t} target{'s' if t > 1 else ''}" for t in targets)
                   + " |")
        out.append("|---|" + "---:|" * len(targets))
        for relay in relays:
            row = [RELAY_NAMES[relay]]
            for t in targets:
                s = summary.get((relay, chunk, t))
                row.append("–" if s is None else
                           f"{fmt(s['cpu_s_per_gib'], 1)} · {fmt(s['mb_per_s'], 1)}")
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        out.append(f"Ratios of CPU-s per GiB, {chunkLabel(chunk)} (median of per-repetition "
                   "ratios; < 1: the first uses less CPU):")
        out.append("")
        out.append("| ratio | " + " | ".join(f"{t}" for t in targets) + " |")
        out.append("|---|" + "---:|" * len(targets))
        for name in ("group/mainline", "group/splice", "group/readwrite", "mainline/splice",
                     "splice/readwrite", "group/mainline MB/s", "group/splice MB/s"):
            label = name.replace("splice", "splice+tee").replace("readwrite", "read/write")
            out.append(f"| {label} | " +
                       " | ".join(fmt(ratios[(chunk, t)][name]) for t in targets) + " |")
        out.append("")
    out.append("Client + relay + sinks CPU-s per GiB · the whole VM's busy CPU-s per GiB "
               "(/proc/stat, 10 ms ticks; on loopback each sender also runs its receiver's "
               "TCP input; same runs):")
    out.append("")
    out.append("| relay | " + " | ".join(f"{chunkLabel(c)}, {t}" for c in chunks for t in targets)
               + " |")
    out.append("|---|" + "---:|" * (len(chunks) * len(targets)))
    for relay in relays:
        row = [RELAY_NAMES[relay]]
        for c in chunks:
            for t in targets:
                s = summary.get((relay, c, t))
                row.append("–" if s is None else f"{fmt(s['all_cpu_s_per_gib'], 1)} · "
                           f"{fmt(s['vm_cpu_s_per_gib'], 1)}")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append("grelay details (medians): average bytes per chunk, and io-wq worker CPU-s per "
               "GiB (the tap's writes to tmpfs are punted to io-wq; per-thread CPU from /proc, "
               "10 ms ticks, so coarse for the smaller 4 KiB runs):")
    out.append("")
    out.append("| path | " + " | ".join(f"{chunkLabel(c)}, {t}" for c in chunks for t in targets)
               + " |")
    out.append("|---|" + "---:|" * (len(chunks) * len(targets)))
    for relay in relays:
        if relay not in GRELAY_RELAYS:
            continue
        row = [RELAY_NAMES[relay]]
        for c in chunks:
            for t in targets:
                s = summary.get((relay, c, t))
                row.append("–" if s is None else
                           f"{fmt(s['avg_chunk_bytes'], 0)} · {fmt(s['iowq_cpu_s_per_gib'], 1)}")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if failed:
        out.append("Failed runs (left out of the medians):")
        out.append("")
        for r in failed:
            out.append(f"- {RELAY_NAMES[r['relay']]}, {chunkLabel(r['chunk'])}, {r['targets']} "
                       f"target(s), repetition {r['rep'] + 1}: {r['error']}")
        out.append("")
    return "\n".join(out)


def write(raw, prefix):
    summary, ratios, verdict, chunks, targets = summarize(raw)
    doc = dict(raw)
    doc["summary"] = [dict(relay=k[0], chunk=k[1], targets=k[2], **v)
                      for k, v in sorted(summary.items())]
    doc["ratios"] = [dict(chunk=k[0], targets=k[1], **v) for k, v in sorted(ratios.items())]
    doc["verdict"] = verdict
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(prefix + ".md", "w") as f:
        f.write(renderMd(raw, summary, ratios, verdict, chunks, targets) + "\n")


def cmdReport(args):
    with open(args.raw) as f:
        raw = json.load(f)
    raw = {"meta": raw["meta"], "runs": raw["runs"]}
    write(raw, args.out)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (inside the VM)")
    r.add_argument("--bin-dir", required=True, help="where fanout-sink/-source/-relay are")
    r.add_argument("--grelay", required=True)
    r.add_argument("--out", required=True, help="output prefix (PREFIX.json, PREFIX.md)")
    r.add_argument("--reps", type=int, default=5)
    r.add_argument("--relays", default=",".join(RELAYS))
    r.add_argument("--chunks", default=",".join(str(c) for c in CHUNKS))
    r.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    r.add_argument("--bytes-64k", type=int, default=64 << 20, help="bytes per run, 64 KiB chunks")
    r.add_argument("--bytes-4k", type=int, default=16 << 20, help="bytes per run, 4 KiB chunks")
    r.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    r.add_argument("--no-tap", dest="tap", action="store_false",
                   help="no tap (a control: what the tap costs each relay)")
    r.add_argument("--perf", metavar="DIR",
                   help="profile every run with perf record -a -g (its CPU numbers are then "
                        "not comparable): reports in DIR")
    r.add_argument("--quick", action="store_true", help="(recorded in the output only)")
    r.add_argument("--clock", choices=("icount", "host"), default="host",
                   help="how the VM's clock runs (recorded; run.sh sets it)")
    r.set_defaults(func=cmdRun)
    s = sub.add_parser("report", help="re-render PREFIX.md/.json from a PREFIX.json")
    s.add_argument("raw")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmdReport)
    args = p.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
