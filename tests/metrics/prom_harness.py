"""A real Prometheus (Debian's `prometheus` binary) for tests, stdlib only.

    from prom_harness import Prometheus, ExporterProcess, free_port, skip_unless_prometheus

    skip_unless_prometheus()                       # exit 77 (ctest: skipped) without it
    with Prometheus(["127.0.0.1:9100"]) as prom:   # job "grelay", scrape every 1s
        prom.wait_for_scrape()                     # every target up == 1
        prom.wait_for_series('grelay_connections_total{listener="web"}')
        prom.value('sum(grelay_connections_total)')          # -> float
        prom.query('rate(grelay_sent_bytes_total[1m])')      # -> list of {metric, value}
        prom.query_raw('bad(')                     # -> the API's JSON, status "error"

Prometheus runs with a temp storage dir and --web.listen-address=127.0.0.1:<free port>;
rule_files (absolute paths) are evaluated every evaluation_interval. Its log goes to
<workdir>/prometheus.log, printed when start() fails.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

SKIP = 77  # ctest SKIP_RETURN_CODE


class PromError(Exception):
    """The Prometheus HTTP API answered with status "error"."""


def skip_unless_prometheus():
    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    if missing:
        print("SKIP: %s not installed (Debian package prometheus)" % " and ".join(missing))
        sys.exit(SKIP)


# Below the ephemeral range, so no outgoing connection of a test running alongside takes
# the port before the server binds it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from free_ports import free_port  # noqa: E402,F401


def http_get(url, timeout=5):
    """(status, body bytes) of a GET; status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Prometheus:
    def __init__(self, targets, job="grelay", scrape_interval="1s", evaluation_interval="1s",
                 rule_files=(), workdir=None, binary="prometheus"):
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = [os.path.abspath(f) for f in rule_files]
        self.binary = binary
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="grelay-prom-")
        self.port = None
        self.url = None
        self.proc = None
        self._log = None

    # --- lifecycle -------------------------------------------------------------------

    def config_text(self):
        lines = [
            "global:",
            "  scrape_interval: %s" % self.scrape_interval,
            "  scrape_timeout: %s" % self.scrape_interval,
            "  evaluation_interval: %s" % self.evaluation_interval,
        ]
        if self.rule_files:
            lines.append("rule_files:")
            lines += ["  - %s" % json.dumps(f) for f in self.rule_files]
        lines += [
            "scrape_configs:",
            "  - job_name: %s" % json.dumps(self.job),
            "    static_configs:",
            "      - targets: %s" % json.dumps(self.targets),
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout=60):
        config = os.path.join(self.workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(self.config_text())
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self._log = open(os.path.join(self.workdir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [self.binary,
             "--config.file=" + config,
             "--storage.tsdb.path=" + os.path.join(self.workdir, "data"),
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prometheus exited with %d:\n%s" % (self.proc.returncode, self.log()))
            status, _ = http_get(self.url + "/-/ready", timeout=2)
            if status == 200:
                return self
            time.sleep(0.2)
        raise RuntimeError("prometheus not ready after %ss:\n%s" % (timeout, self.log()))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        try:
            with open(os.path.join(self.workdir, "prometheus.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # --- HTTP API ----------------------------------------------------------------------

    def api_raw(self, path, **params):
        """The decoded JSON of GET /api/v1/<path>?params, whatever its status."""
        url = "%s/api/v1/%s" % (self.url, path)
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(url, timeout=10)
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "errorType": "http", "error": "HTTP %d: %r" % (status, body[:200])}

    def api(self, path, **params):
        """The "data" of GET /api/v1/<path>; PromError when status is not "success"."""
        reply = self.api_raw(path, **params)
        if reply.get("status") != "success":
            raise PromError("%s %s: %s: %s" % (path, params, reply.get("errorType"), reply.get("error")))
        return reply["data"]

    def query_raw(self, expr):
        return self.api_raw("query", query=expr)

    def query(self, expr):
        """The result of an instant query: a list of {"metric": {...}, "value": [t, "v"]}
        for vectors; a scalar or string result is returned as one such entry."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr):
        """The single sample `expr` returns, as a float (PromError if not exactly one)."""
        result = self.query(expr)
        if len(result) != 1:
            raise PromError("%s: expected 1 sample, got %d: %s" % (expr, len(result), result))
        return float(result[0]["value"][1])

    def series(self, expr, drop=("job", "instance")):
        """{frozenset(labels without __name__ and `drop`): float value} of a query."""
        out = {}
        for r in self.query(expr):
            labels = frozenset((k, v) for k, v in r["metric"].items() if k != "__name__" and k not in drop)
            out[labels] = float(r["value"][1])
        return out

    # --- waiting -----------------------------------------------------------------------

    def wait_for_series(self, expr, predicate=None, timeout=30):
        """Polls `expr` until it returns samples (and predicate(result) holds)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.query(expr)
                if last and (predicate is None or predicate(last)):
                    return last
            except PromError as e:
                last = e
            time.sleep(0.3)
        raise TimeoutError("%s: no matching samples after %ss (last: %s)\n%s"
                           % (expr, timeout, last, self.log()))

    def wait_for_scrape(self, timeout=30):
        """Waits until every target has been scraped successfully (up == 1)."""
        want = len(self.targets)
        return self.wait_for_series(
            'up{job=%s} == 1' % json.dumps(self.job),
            predicate=lambda r: len(r) == want, timeout=timeout)

    def wait_for_scrapes(self, count, timeout=60):
        """Waits until Prometheus holds `count` scrapes of every target (rate() needs 2+)."""
        return self.wait_for_series(
            'count_over_time(up{job=%s}[10m]) >= %d' % (json.dumps(self.job), count),
            predicate=lambda r: len(r) == len(self.targets), timeout=timeout)

    def wait_for_rule_evaluation(self, timeout=30):
        """Waits until every rule group has been evaluated at least once; returns the groups."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            groups = self.api("rules")["groups"]
            # An unevaluated rule reports Go's zero time, 0001-01-01T00:00:00Z.
            if groups and all(not r.get("lastEvaluation", "0001").startswith("0001")
                              for g in groups for r in g["rules"]):
                return groups
            time.sleep(0.3)
        raise TimeoutError("rules not evaluated after %ss\n%s" % (timeout, self.log()))


class ExporterProcess:
    """Runs a command that prints "port N" on its first stdout line once it serves
    (tests/metrics/metrics_test_exporter); its stdin stays open until stop(), and it
    exits on EOF, so it never outlives the test."""

    def __init__(self, argv, timeout=10):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError("%s did not report its port (got %r)" % (argv[0], line))
        self.port = int(line.split()[1])
        self.address = "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
