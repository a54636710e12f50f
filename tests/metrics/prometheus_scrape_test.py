#!/usr/bin/env python3
"""A real Prometheus scrapes grelay's exposition and stores exactly the expected values.

metrics_test_exporter serves the synthetic stats of fixture.h (two workers; every counter
of listener L is BASE + 100 * L on worker 0 and ten times that on worker 1). This test
starts Prometheus on a free port, waits for a scrape and checks, through /api/v1/query,
every grelay_* family: the full set of series (labels) and each value, computed here from
the fixture's formula, not taken from the exporter.

usage: prometheus_scrape_test.py --exporter PATH
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prom_harness import ExporterProcess, Prometheus, skip_unless_prometheus  # noqa: E402

LISTENERS = [
    # name, upstream pool, mirrors, has tap, max_connections, max_connections_per_client
    ("web", "app", ["analytics", "shadow"], True, 0, 4),
    ("api", "secure_api", [], False, 100, 0),
]
BASE = {
    "grelay_connections_total": 1,
    "grelay_connections_active": 2,
    "grelay_client_sent_bytes_total": 7,
    "grelay_upstream_unavailable_total": 12,
    "grelay_idle_timeouts_total": 13,
    "grelay_session_resets_total": 14,
}
TAP_BASE = {"grelay_tap_bytes_total": 15, "grelay_tap_dropped_bytes_total": 16, "grelay_tap_errors_total": 17}
MIRROR_OFFSET = {
    "grelay_mirror_cuts_total": 1,
    "grelay_mirror_dropped_bytes_total": 2,
    "grelay_mirror_connect_errors_total": 3,
    "grelay_mirror_sessions_total": 4,
    "grelay_mirror_response_bytes_total": 5,
}


def total(base, listener_index):
    """Worker 0 holds BASE + 100 * L, worker 1 ten times that."""
    return 11 * (base + 100 * listener_index)


def labels(**kw):
    return frozenset(kw.items())


def expected_families():
    want = {}

    def put(family, key, value):
        want.setdefault(family, {})[key] = float(value)

    put("grelay_build_info", labels(version="0.0.0-test"), 1)
    put("grelay_relay_path_info", labels(path="mainline"), 1)
    put("grelay_workers", labels(), 2)
    put("grelay_max_connections", labels(), 5000)
    for i, (name, upstream, mirrors, tap, max_conn, per_client) in enumerate(LISTENERS):
        if max_conn:
            put("grelay_listener_max_connections", labels(listener=name), max_conn)
        # One series per limit the listener has; the server-wide one always.
        rejected = "grelay_connections_rejected_total"
        put(rejected, labels(listener=name, limit="server"), total(3, i))
        if max_conn:
            put(rejected, labels(listener=name, limit="listener"), total(24, i))
        if per_client:
            put(rejected, labels(listener=name, limit="client"), total(25, i))
        for family, base in BASE.items():
            put(family, labels(listener=name), total(base, i))
        put("grelay_received_bytes_total", labels(listener=name, direction="request"), total(4, i))
        put("grelay_received_bytes_total", labels(listener=name, direction="response"), total(5, i))
        put("grelay_sent_bytes_total", labels(listener=name, target=upstream), total(6, i))
        for path, base in (("group", 8), ("mainline", 9), ("copy", 10), ("splice", 18)):
            put("grelay_chunks_total", labels(listener=name, path=path), total(base, i))
        put("grelay_upstream_connect_errors_total", labels(listener=name, upstream=upstream), total(11, i))
        put("grelay_upstream_marked_down_total", labels(listener=name, upstream=upstream), total(19, i))
        for m, mirror in enumerate(mirrors):
            put("grelay_sent_bytes_total", labels(listener=name, target=mirror), total(30 + 10 * m, i))
            for family, offset in MIRROR_OFFSET.items():
                put(family, labels(listener=name, mirror=mirror), total(30 + 10 * m + offset, i))
        if tap:
            for family, base in TAP_BASE.items():
                put(family, labels(listener=name), total(base, i))
        # Both listeners accept the PROXY protocol.
        put("grelay_proxy_protocol_errors_total", labels(listener=name), total(20, i))
        if name == "web":  # access_log
            put("grelay_access_log_dropped_lines_total", labels(listener=name), total(21, i))
    return want


def expected_histogram():
    """grelay_upstream_connect_duration_seconds per listener: (buckets {le: count}, count, sum)."""
    bounds = ["5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
              "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"]
    out = {}
    for i, (name, upstream, _, _, _, _) in enumerate(LISTENERS):
        observed = [0.00004, 0.0003, 0.02, 0.0003, 3.0, 20.0] + ([0.0015] if i == 1 else [])
        buckets = {le: float(sum(1 for o in observed if o <= float(le))) for le in bounds}
        buckets["+Inf"] = float(len(observed))
        out[(name, upstream)] = (buckets, float(len(observed)), sum(observed))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporter", required=True)
    args = parser.parse_args()
    skip_unless_prometheus()

    failures = []

    def check(ok, message):
        if not ok:
            failures.append(message)
            print("FAIL:", message)

    with ExporterProcess([args.exporter]) as exporter, Prometheus([exporter.address]) as prom:
        prom.wait_for_scrape()
        prom.wait_for_series("grelay_build_info")

        for family, want in expected_families().items():
            got = prom.series(family)
            check(got == want, "%s: got %s, want %s" % (family, sorted(got.items()), sorted(want.items())))

        for (listener, upstream), (buckets, count, total_seconds) in expected_histogram().items():
            sel = '{listener="%s",upstream="%s"}' % (listener, upstream)
            got = {dict(k)["le"]: v for k, v in
                   prom.series("grelay_upstream_connect_duration_seconds_bucket" + sel).items()}
            check(got == buckets, "%s buckets: got %s, want %s" % (listener, got, buckets))
            check(prom.value("grelay_upstream_connect_duration_seconds_count" + sel) == count,
                  "%s _count" % listener)
            got_sum = prom.value("grelay_upstream_connect_duration_seconds_sum" + sel)
            check(abs(got_sum - total_seconds) < 1e-9, "%s _sum: got %r, want %r" % (listener, got_sum, total_seconds))
            # Half of web's 6 connects took <= 0.5ms (3 in the le=0.0005 bucket, 1 below 0.00025).
        check(prom.value('histogram_quantile(0.5, grelay_upstream_connect_duration_seconds_bucket{listener="web"})')
              == 0.0005, "median upstream connect of web is 0.5ms")

        # Every series carries the scrape's job and instance, and only config-derived labels.
        allowed = {"__name__", "job", "instance", "listener", "direction", "target", "path", "mirror",
                   "upstream", "version", "le", "result", "server", "cause", "limit", "file"}
        for r in prom.query('{__name__=~"grelay_.+"}'):
            extra = set(r["metric"]) - allowed
            check(not extra, "%s has labels %s" % (r["metric"]["__name__"], extra))
            check(r["metric"].get("job") == "grelay" and r["metric"].get("instance") == exporter.address,
                  "%s lacks job/instance" % r["metric"])

        # process_* come from the exporter process itself.
        now = time.time()
        start = prom.value("process_start_time_seconds")
        check(now - 120 < start <= now + 1, "process_start_time_seconds %r is not recent" % start)
        for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
                     "process_max_fds"):
            check(prom.value(name) > 0, name + " > 0")
        check(prom.value("process_cpu_seconds_total") >= 0, "process_cpu_seconds_total")
        # Nothing else on the scrape besides prometheus-cpp's exposer_* families.
        names = set(prom.api("label/__name__/values"))
        others = {n for n in names if not n.startswith(("grelay_", "process_", "exposer_", "scrape_", "up"))}
        check(not others, "unexpected metric names %s" % others)

    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("OK: %d grelay families, the connect histogram and process_* match" % len(expected_families()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
