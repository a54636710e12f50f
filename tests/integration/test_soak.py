#!/usr/bin/env python3
"""Soak: mixed traffic for a while, then no errors, no sanitizer reports, flat memory.

For GRELAY_SOAK_SECONDS (default 120) grelay carries at once
  - wrk against nginx through listener "web" (keep-alive HTTP; wrk restarted every
    30 s, so connections churn too), mirrored to "m1";
  - random-size sessions (1 KiB .. 4 MiB, 4 at a time) through listener "stream" to an
    echo upstream, each checked byte for byte, mirrored to "m1" and "m2" and recorded
    by a tap (max_size 128MiB: recording stops there, counted as drops, not errors).

Asserts: no wrk socket error or non-2xx response; every stream session byte-exact; every
stream session's bytes arrived whole at both mirrors (sha256 per mirror connection); no
mirror cut, upstream or mirror connect error, tap error; the tap exports to pcap (exit
0); grelay exits 0 on SIGTERM with a log free of sanitizer reports (under ASan,
LeakSanitizer runs at exit); and resident memory is flat: VmRSS sampled every 2 s, the
mean of the last third of the run within +10% or +8 MiB (whichever is larger) of the
middle third's (under ASan with a 16 MiB quarantine, so that RSS measures grelay and not
ASan's pool of freed memory).

ctest runs it against both builds (the ASan build's GRELAY_BIN is the one that matters for
leaks). GRELAY_SOAK_REPORT=FILE writes the numbers (RSS samples, requests, bytes) as JSON.
"""

import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import time

import harness as h

SECONDS = float(os.environ.get("GRELAY_SOAK_SECONDS", "120"))
WRK_SEGMENT = 30.0
RSS_EVERY = 2.0


class SoakTest(h.GrelayTest):
    def test_mixed_traffic_soak_has_no_errors_and_flat_memory(self):
        why = h.NginxServer.available()
        if why:
            self.skipTest(why)
        if not shutil.which("wrk"):
            self.skipTest("wrk is not installed")
        with h.NginxServer(body=b"s" * 4096) as nginx, h.EchoServer() as echo, \
                h.SinkServer(keep="sha256") as m1, h.SinkServer(keep="sha256") as m2:
            tap_dir = tempfile.mkdtemp(prefix="grelay-soak-tap-")
            self.addCleanup(shutil.rmtree, tap_dir, True)
            cfg = h.Config()
            cfg.with_admin()
            cfg.upstream("nginx", [nginx.address])
            cfg.upstream("echo", [echo.address])
            web = cfg.listener("web", "nginx", mirrors=[{"name": "m1", "address": m1.address}])
            stream = cfg.listener("stream", "echo",
                                  mirrors=[{"name": "m1", "address": m1.address},
                                           {"name": "m2", "address": m2.address}],
                                  tap={"path": tap_dir, "max_size": "128MiB"})
            env = None
            if h.SANITIZED:
                # ASan keeps freed memory in a quarantine (256 MiB by default) that fills at
                # the rate grelay frees: RSS would climb for minutes for that reason alone.
                # 16 MiB still catches a use-after-free of anything recently freed.
                asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
                env = {"ASAN_OPTIONS": asan + ":quarantine_size_mb=16"}
            with h.Grelay(cfg, env=env) as g:
                report = self.soak(g, web, stream)
                report["metrics"] = {k: g.metric(k) for k in (
                    "grelay_connections_total", "grelay_session_resets_total",
                    "grelay_mirror_cuts_total", "grelay_mirror_connect_errors_total",
                    "grelay_upstream_connect_errors_total", "grelay_upstream_unavailable_total",
                    "grelay_tap_errors_total", "grelay_tap_bytes_total",
                    "grelay_tap_dropped_bytes_total", "grelay_idle_timeouts_total")}
                for name in ("grelay_mirror_cuts_total", "grelay_mirror_connect_errors_total",
                             "grelay_upstream_connect_errors_total",
                             "grelay_upstream_unavailable_total", "grelay_tap_errors_total"):
                    self.assertEqual(report["metrics"][name], 0, name)
                # Both mirrors got every stream session whole (m1 also gets wrk's requests).
                m2_digests = sorted(r.digest() for r in m2.records())
                m1_digests = [r.digest() for r in m1.records()]
                want = sorted(report.pop("digests"))
                self.assertEqual(len(m2_digests), len(want), "sessions at mirror m2")
                self.assertEqual(m2_digests, want, "mirror m2's bytes differ from the sessions'")
                at_m1 = set(m1_digests)
                missing = [d for d in want if d not in at_m1]
                self.assertFalse(missing, f"{len(missing)} sessions incomplete at mirror m1")
                # LeakSanitizer runs at this exit under ASan; the harness checks the log.
                g.stop()
            export = os.path.join(tap_dir, "soak.pcap")
            r = h.run_grelay(["tap", "export", "--pcap", export, tap_dir], timeout=600)
            self.assertEqual(r.returncode, 0, f"tap export: {r.stdout}{r.stderr}")
            report["tap_export"] = r.stdout.strip()
            os.unlink(export)
        self.check_rss(report)
        path = os.environ.get("GRELAY_SOAK_REPORT")
        if path:
            with open(path, "w") as f:
                json.dump(report, f, indent=1)

    def soak(self, g: h.Grelay, web: int, stream: int) -> dict:
        stop = threading.Event()
        rss: list = []
        wrk_runs: list = []
        sessions: list = []
        digests: list = []
        lock = threading.Lock()

        def sampler():
            t0 = time.monotonic()
            while not stop.is_set():
                rss.append((round(time.monotonic() - t0, 1), h.sample_rss(g.pid)))
                stop.wait(RSS_EVERY)

        def wrk_loop():
            end = time.monotonic() + SECONDS
            while time.monotonic() < end - 1:
                seg = max(1, int(min(WRK_SEGMENT, end - time.monotonic())))
                wrk_runs.append(h.run_wrk(f"http://127.0.0.1:{web}/{h.NginxServer.FILE_NAME}",
                                          threads=1, connections=16, duration=f"{seg}s",
                                          timeout="10s"))

        def stream_loop(worker: int):
            rng = random.Random(worker)
            seed = worker * 1_000_000
            while not stop.is_set():
                seed += 1
                size = rng.choice((1 * h.KiB, 64 * h.KiB, 512 * h.KiB, 4 * h.MiB))
                size = rng.randint(size // 2, size)
                data = h.Stream(seed, size)
                r = h.stream_session(stream, data, timeout=60, index=seed)
                digest = hashlib.sha256()
                for piece in data.chunks(1 * h.MiB):
                    digest.update(piece)
                with lock:
                    sessions.append(r)
                    digests.append((size, digest.hexdigest()))

        threads = [threading.Thread(target=sampler, daemon=True),
                   threading.Thread(target=wrk_loop, daemon=True)]
        threads += [threading.Thread(target=stream_loop, args=(i + 1,), daemon=True)
                    for i in range(4)]
        h.log(f"soak: {SECONDS:.0f}s of wrk + stream sessions + 2 mirrors + tap "
              f"(sanitized={h.SANITIZED})")
        for t in threads:
            t.start()
        threads[1].join(SECONDS + 120)  # wrk_loop ends on time
        stop.set()
        for t in threads:
            t.join(120)
        self.assertTrue(h.wait_for(lambda: g.metric("grelay_connections_active") == 0, 30),
                        "sessions still open after the soak")

        bad = [r for r in sessions if not r.ok]
        self.assertFalse(bad, f"{len(bad)} of {len(sessions)} stream sessions failed; first: "
                              f"{bad[0] if bad else ''}")
        self.assertGreater(len(sessions), 10, "too few stream sessions ran")
        for w in wrk_runs:
            self.assertEqual(w.exit_code, 0, w.output)
            self.assertGreater(w.requests, 0, w.output)
            self.assertEqual(w.socket_errors, 0, w.output)
            self.assertEqual(w.non_2xx, 0, w.output)
        report = {
            "seconds": SECONDS,
            "sanitized": h.SANITIZED,
            "binary": h.GRELAY_BIN,
            "wrk_requests": sum(w.requests for w in wrk_runs),
            "wrk_runs": len(wrk_runs),
            "wrk_requests_per_second": round(sum(w.requests for w in wrk_runs) /
                                             max(1e-9, sum(w.duration for w in wrk_runs))),
            "stream_sessions": len(sessions),
            "stream_bytes_each_way": sum(r.sent for r in sessions),
            "received_bytes": {d: g.metric("grelay_received_bytes_total", direction=d)
                               for d in ("request", "response")},
            "rss_kib": rss,
            "digests": [d for d in digests],
        }
        h.log(f"soak: {report['wrk_requests']} HTTP requests in {len(wrk_runs)} wrk runs "
              f"({report['wrk_requests_per_second']}/s), {len(sessions)} stream sessions "
              f"({report['stream_bytes_each_way'] / h.MiB:.0f} MiB each way)")
        return report

    def check_rss(self, report: dict) -> None:
        samples = [kib for _, kib in report["rss_kib"]]
        self.assertGreaterEqual(len(samples), 6, "too few RSS samples")
        third = len(samples) // 3
        middle = samples[third:2 * third]
        last = samples[2 * third:]
        mean_mid = sum(middle) / len(middle)
        mean_last = sum(last) / len(last)
        bound = max(mean_mid * 1.10, mean_mid + 8 * 1024)
        report["rss_summary"] = {"first_kib": samples[0], "max_kib": max(samples),
                                 "middle_third_mean_kib": round(mean_mid),
                                 "last_third_mean_kib": round(mean_last),
                                 "bound_kib": round(bound)}
        h.log(f"soak: VmRSS {samples[0]} KiB at start, max {max(samples)} KiB; middle third "
              f"mean {mean_mid:.0f} KiB, last third mean {mean_last:.0f} KiB "
              f"(bound {bound:.0f} KiB)")
        self.assertLessEqual(mean_last, bound,
                             f"RSS grows: middle third {mean_mid:.0f} KiB, last third "
                             f"{mean_last:.0f} KiB; samples {report['rss_kib']}")


if __name__ == "__main__":
    h.main()
