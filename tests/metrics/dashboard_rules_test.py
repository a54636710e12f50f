#!/usr/bin/env python3
"""grelay's Prometheus config, rules and Grafana dashboard work against a real Prometheus.

1. promtool check config docker/prometheus/prometheus.yml, promtool check rules and
   promtool test rules tests/metrics/grelay_rules_test.yml (alert unit tests).
2. Grafana provisioning points at the dashboard and at http://prometheus:9090.
3. A real Prometheus scrapes metrics_test_exporter --grow (counters keep moving) with
   grelay.rules.yml loaded. EVERY query of the dashboard (each panel target, with Grafana's
   variables substituted, for "All" and for one listener) must succeed and return data;
   every metric it names must exist. Every recording and alerting rule must evaluate with
   health "ok", every recorded series must exist, and GrelayListenerConnectionsNearMax must
   be active for listener "api" (1122 open of its 100), the certificate and CRL alerts for
   listener "web" (dates long past).

usage: dashboard_rules_test.py --exporter PATH --source-dir REPO
"""

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prom_harness import ExporterProcess, Prometheus, PromError, skip_unless_prometheus  # noqa: E402

METRIC_NAME = re.compile(r"(?<![\w:])((?:grelay|process)_[a-z0-9_]+)\b(?!:)")

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
        print("FAIL:", message)
    return ok


def run(argv, cwd=None):
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check(proc.returncode == 0, "%s exited %d:\n%s" % (" ".join(argv), proc.returncode, proc.stdout))
    return proc.stdout


def panels_of(dashboard):
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr, job, instance, listener):
    """What Grafana sends: variables replaced ("All" is allValue ".*"), intervals filled."""
    for name, value in (("job", job), ("instance", instance), ("listener", listener)):
        expr = expr.replace("${%s}" % name, value).replace("$" + name, value)
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "5s")
            .replace("$__range", "1h"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exporter", required=True)
    parser.add_argument("--source-dir", required=True)
    args = parser.parse_args()
    skip_unless_prometheus()
    src = os.path.abspath(args.source_dir)
    prom_dir = os.path.join(src, "docker", "prometheus")
    rules = os.path.join(prom_dir, "rules", "grelay.rules.yml")
    grafana = os.path.join(src, "docker", "grafana")

    # 1. promtool
    run(["promtool", "check", "config", os.path.join(prom_dir, "prometheus.yml")])
    out = run(["promtool", "check", "rules", rules])
    check("SUCCESS" in out, "promtool check rules: " + out)
    run(["promtool", "test", "rules", os.path.join(src, "tests", "metrics", "grelay_rules_test.yml")])

    # 2. provisioning files (plain text checks: no YAML parser in the stdlib)
    with open(os.path.join(grafana, "provisioning", "datasources", "prometheus.yaml")) as f:
        ds = f.read()
    check("url: http://prometheus:9090" in ds and "type: prometheus" in ds and "uid: prometheus" in ds,
          "datasource provisioning must point at http://prometheus:9090 with uid prometheus")
    with open(os.path.join(grafana, "provisioning", "dashboards", "grelay.yaml")) as f:
        provider = f.read()
    check("path: /var/lib/grafana/dashboards" in provider and "type: file" in provider,
          "dashboard provider must load /var/lib/grafana/dashboards")

    with open(os.path.join(grafana, "dashboards", "grelay.json")) as f:
        dashboard = json.load(f)
    check(dashboard.get("uid") == "grelay", "dashboard uid is grelay")
    queries = []  # (panel title, expr)
    ids = set()
    for panel in panels_of(dashboard):
        check(panel["id"] not in ids, "duplicate panel id %s" % panel["id"])
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        check(panel.get("datasource", {}).get("uid") == "${datasource}",
              "panel %r must use the datasource variable" % panel["title"])
        check(bool(panel.get("description")), "panel %r has a description" % panel["title"])
        targets = panel.get("targets", [])
        check(targets, "panel %r has no queries" % panel["title"])
        for target in targets:
            queries.append((panel["title"], target["expr"]))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    check(set(variables) == {"datasource", "job", "instance", "listener"},
          "template variables: %s" % sorted(variables))
    print("dashboard: %d panels with %d queries" % (len(ids), len(queries)))

    # 3. a real Prometheus with the rules, scraping a moving exporter
    with ExporterProcess([args.exporter, "--grow"]) as exporter, \
            Prometheus([exporter.address], rule_files=[rules]) as prom:
        prom.wait_for_scrape()
        prom.wait_for_scrapes(4)  # rate() over 1m needs two samples; a few more for safety
        groups = prom.wait_for_rule_evaluation()
        names = set(prom.api("label/__name__/values"))

        # Variables: label_values(METRIC, LABEL) is Grafana's; ask the same of the API.
        for name in ("job", "instance", "listener"):
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["definition"])
            check(m is not None, "variable %s: %s" % (name, variables[name]["definition"]))
            if m:
                values = prom.api("label/%s/values" % m.group(2),
                                  **{"match[]": substitute(m.group(1), ".*", ".*", ".*")})
                check(values, "variable %s has no values" % name)

        for listener in (".*", "web"):
            for title, expr in queries:
                q = substitute(expr, "grelay", exporter.address, listener)
                reply = prom.query_raw(q)
                if not check(reply.get("status") == "success",
                             "panel %r: %s -> %s: %s" % (title, q, reply.get("errorType"), reply.get("error"))):
                    continue
                check(reply["data"]["result"], "panel %r returns no data: %s" % (title, q))

        for title, expr in queries:
            for metric in METRIC_NAME.findall(expr):
                check(metric in names, "panel %r names unknown metric %s" % (title, metric))

        rule_count = 0
        for group in groups:
            for rule in group["rules"]:
                rule_count += 1
                check(rule["health"] == "ok",
                      "rule %s: health %s %s" % (rule["name"], rule["health"], rule.get("lastError", "")))
                reply = prom.query_raw(rule["query"])
                check(reply.get("status") == "success", "rule %s: %s" % (rule["name"], reply.get("error")))
                for metric in METRIC_NAME.findall(rule["query"]):
                    check(metric in names, "rule %s names unknown metric %s" % (rule["name"], metric))
                if rule["type"] == "recording":
                    # The cut ratio divides two growing-free rates: 0/0 is NaN, still a sample.
                    try:
                        check(prom.query(rule["name"]), "recording rule %s has no series" % rule["name"])
                    except PromError as e:
                        check(False, "recording rule %s: %s" % (rule["name"], e))
        print("rules: %d evaluated" % rule_count)

        alerts = prom.api("alerts")["alerts"]
        active = {(a["labels"]["alertname"], a["labels"].get("listener")) for a in alerts}
        check(("GrelayListenerConnectionsNearMax", "api") in active,
              "GrelayListenerConnectionsNearMax{listener=api} not active: %s" % sorted(active, key=str))
        # The exporter's certificate and CRL dates are in 2025/2026: past, so both fire.
        for name in ("GrelayTlsCertificateExpiresSoon", "GrelayTlsCrlExpiresSoon"):
            check((name, "web") in active, "%s{listener=web} not active: %s" % (name, sorted(active, key=str)))
        check(("GrelayConnectionsNearMax", None) not in active, "server-wide limit is at 23%, no alert")

    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("OK: promtool checks, %d dashboard queries and every rule work against Prometheus" % len(queries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
