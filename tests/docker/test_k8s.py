#!/usr/bin/env python3
"""docker/k8s/: every manifest parses and the objects agree with each other, with the
image (Dockerfile) and with the grelay config they carry:

- `kubectl apply -f docker/k8s/` sees only Kubernetes objects there (ConfigMap, Deployment,
  Service); optional/ and node/ hold the ServiceMonitor and the profile installer;
- the Deployment runs the compose image tag with the Dockerfile's CMD, as the Dockerfile's
  non-root uid, runAsNonRoot, read-only root, no privilege escalation, capabilities ALL
  dropped, resources set, seccomp "Localhost" grelay/seccomp-io_uring.json (the file in
  node/, and the path the installer DaemonSet writes), config and tap mounted where the
  image and the config expect them;
- container ports = the config's listener and admin ports = the Dockerfile's EXPOSE;
  the liveness probe GETs /healthz and the readiness probe /ready on the admin port;
  prometheus.io/scrape, port and path annotations name the admin port and /metrics;
- the Service selects the pods and exposes the listener and the metrics port; the
  ServiceMonitor selects the Service and scrapes its metrics port at /metrics;
- the ConfigMap's grelay.toml passes `grelay --check` (Service names replaced by 127.0.0.1,
  see docker/README.md) and listens on 0.0.0.0; workers = the CPU request.
"""

import glob
import os
import re
import tomllib
import unittest

import docker_common as c


class K8sTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        yaml = c.yaml_module()
        cls.docs = {}
        cls.files = sorted(glob.glob(os.path.join(c.K8S, "**", "*.yaml"), recursive=True))
        for f in cls.files:
            with open(f) as fh:
                for d in yaml.safe_load_all(fh):
                    if d is not None:
                        cls.docs[(d["kind"], d["metadata"]["name"])] = (d, os.path.relpath(f, c.K8S))
        cls.dockerfile = c.parse_dockerfile(c.path("docker", "Dockerfile"))
        with open(os.path.join(c.DOCKER, "compose.yaml")) as f:
            cls.compose = yaml.safe_load(f)

    def obj(self, kind, name=None):
        found = [d for (k, n), (d, _) in self.docs.items() if k == kind and (name is None or n == name)]
        self.assertEqual(len(found), 1, f"one {kind} {name or ''} expected")
        return found[0]

    def last(self, keyword):
        stage = max(i.stage for i in self.dockerfile)
        return [i for i in self.dockerfile if i.keyword == keyword and i.stage == stage]

    @property
    def deployment(self):
        return self.obj("Deployment", "grelay")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]

    @property
    def container(self):
        cs = self.pod["spec"]["containers"]
        self.assertEqual(len(cs), 1)
        return cs[0]

    def grelay_config_text(self):
        cm = self.obj("ConfigMap")
        return cm["data"]["grelay.toml"]

    def grelay_config(self):
        return tomllib.loads(self.grelay_config_text())

    def test_every_manifest_parses_into_known_objects(self):
        kinds = {k for k, _ in self.docs}
        self.assertEqual(kinds, {"ConfigMap", "Deployment", "Service", "ServiceMonitor", "DaemonSet"})
        for (kind, name), (d, f) in self.docs.items():
            with self.subTest(object=f"{kind}/{name}", file=f):
                self.assertIn("apiVersion", d)
                self.assertTrue(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name)
        top = {os.path.basename(f) for f in glob.glob(os.path.join(c.K8S, "*"))
               if os.path.isfile(f)}
        self.assertEqual(top, {"configmap.yaml", "deployment.yaml", "service.yaml"},
                         "kubectl apply -f docker/k8s/ must see only the app's objects")
        self.assertEqual(self.docs[("ServiceMonitor", "grelay")][1], "optional/servicemonitor.yaml")

    def test_image_and_args_match_compose_and_dockerfile(self):
        self.assertEqual(self.container["image"], self.compose["services"]["grelay"]["image"])
        self.assertEqual(self.container["image"], "grelay:" + c.cmake_version())
        cmd = self.last("CMD")[0].json_args()
        self.assertEqual(self.container.get("args", cmd), cmd)
        self.assertNotIn("command", self.container, "keep the image's ENTRYPOINT")

    def test_security_context(self):
        psc = self.pod["spec"]["securityContext"]
        csc = self.container["securityContext"]
        uid, gid = (int(x) for x in self.last("USER")[0].args.split(":"))
        self.assertIs(psc["runAsNonRoot"], True)
        self.assertEqual((psc["runAsUser"], psc["runAsGroup"]), (uid, gid))
        self.assertIs(csc["readOnlyRootFilesystem"], True)
        self.assertIs(csc["allowPrivilegeEscalation"], False)
        self.assertEqual(csc["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("add", csc["capabilities"])
        self.assertIs(self.pod["spec"].get("automountServiceAccountToken"), False)
        sp = psc["seccompProfile"]
        self.assertEqual(sp, {"type": "Localhost", "localhostProfile": "grelay/seccomp-io_uring.json"})
        self.assertNotIn("seccompProfile", csc, "one profile, set for the pod")
        node_file = os.path.join(c.K8S, "node", os.path.basename(sp["localhostProfile"]))
        self.assertTrue(os.path.isfile(node_file), node_file)

    def test_installer_writes_where_the_kubelet_looks(self):
        ds = self.obj("DaemonSet", "grelay-seccomp-installer")
        localhost = self.pod["spec"]["securityContext"]["seccompProfile"]["localhostProfile"]
        vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        host = vols["host-seccomp"]["hostPath"]["path"]
        self.assertEqual(host, "/var/lib/kubelet/seccomp/" + os.path.dirname(localhost))
        init = ds["spec"]["template"]["spec"]["initContainers"][0]
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        script = " ".join(init["command"])
        self.assertIn(mounts["host-seccomp"] + "/" + os.path.basename(localhost), script)
        self.assertIn(mounts["profile"] + "/" + os.path.basename(localhost), script)

    def test_resources_are_set(self):
        res = self.container["resources"]
        for key in ("cpu", "memory"):
            self.assertIn(key, res["requests"])
        self.assertIn("memory", res["limits"])
        workers = self.grelay_config()["server"]["workers"]
        self.assertEqual(str(res["requests"]["cpu"]), str(workers),
                         "[server] workers should match the CPU request")

    def test_ports_probes_and_annotations_use_the_config_ports(self):
        cfg = self.grelay_config()
        a = c.config_addresses(cfg)
        admin = c.port_of(a["admin"])
        listeners = {c.port_of(x) for x in a["listeners"].values()}
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(set(ports.values()), listeners | {admin})
        expose = {int(p.split("/")[0]) for i in self.last("EXPOSE") for p in i.args.split()}
        self.assertEqual(set(ports.values()), expose)
        for addr in list(a["listeners"].values()) + [a["admin"]]:
            self.assertEqual(c.host_of(addr), "0.0.0.0", addr)

        def port_number(p):
            return ports[p] if isinstance(p, str) else p

        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/ready")):
            with self.subTest(probe=probe):
                get = self.container[probe]["httpGet"]
                self.assertEqual(port_number(get["port"]), admin)
                self.assertEqual(get["path"], path)

        ann = self.pod["metadata"]["annotations"]
        self.assertEqual(ann["prometheus.io/scrape"], "true")
        self.assertEqual(ann["prometheus.io/port"], str(admin))
        self.assertEqual(ann["prometheus.io/path"], "/metrics")

    def test_mounts_match_the_image_and_the_config(self):
        cfg = self.grelay_config()
        mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        vols = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        cmd = self.last("CMD")[0].json_args()
        conf_path = cmd[cmd.index("-c") + 1]
        conf = [n for n, m in mounts.items() if m["mountPath"] == os.path.dirname(conf_path)]
        self.assertEqual(len(conf), 1, "the ConfigMap must be mounted at " + os.path.dirname(conf_path))
        self.assertTrue(mounts[conf[0]].get("readOnly"))
        cm_name = vols[conf[0]]["configMap"]["name"]
        self.assertEqual(cm_name, self.obj("ConfigMap")["metadata"]["name"])
        self.assertIn(os.path.basename(conf_path), self.obj("ConfigMap")["data"])
        volume = self.last("VOLUME")[0].json_args()[0]
        tap = [n for n, m in mounts.items() if m["mountPath"] == volume]
        self.assertEqual(len(tap), 1, "the tap volume must be mounted at the image's VOLUME")
        self.assertIn("emptyDir", vols[tap[0]])
        for p in c.config_addresses(cfg)["taps"]:
            self.assertTrue(p.startswith(volume + "/"), p)

    def test_service_and_servicemonitor_select_grelay(self):
        labels = self.pod["metadata"]["labels"]
        sel = self.deployment["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(sel.items(), labels.items())
        svc = self.obj("Service", "grelay")
        self.assertLessEqual(svc["spec"]["selector"].items(), labels.items())
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        admin = c.port_of(c.config_addresses(self.grelay_config())["admin"])
        targets = {}
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            number = ports.get(t) if isinstance(t, str) else t
            self.assertIn(number, ports.values(), f"Service port {p['name']} targets no container port")
            targets[p["name"]] = number
        self.assertEqual(set(targets.values()), set(ports.values()),
                         "the Service exposes the listener and the metrics port")
        sm = self.obj("ServiceMonitor", "grelay")
        self.assertEqual(self.docs[("ServiceMonitor", "grelay")][0]["apiVersion"], "monitoring.coreos.com/v1")
        self.assertLessEqual(sm["spec"]["selector"]["matchLabels"].items(), svc["metadata"]["labels"].items())
        (ep,) = sm["spec"]["endpoints"]
        self.assertEqual(targets[ep["port"]], admin)
        self.assertEqual(ep.get("path", "/metrics"), "/metrics")

    def test_configmap_config_passes_grelay_check(self):
        c.grelay_bin()
        r = c.grelay_check(self.grelay_config_text())
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_shutdown_fits_the_grace_period(self):
        spec = self.pod["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        server = self.grelay_config()["server"]

        def seconds(key, default):
            m = re.fullmatch(r"(\d+)s", server.get(key, default))
            self.assertTrue(m, f"{key} = {server.get(key)}")
            return int(m.group(1))

        delay = seconds("shutdown_delay", "0s")
        # The Service drops the endpoint asynchronously: the pod keeps accepting meanwhile,
        # with /ready failing, and needs no preStop hook (or shell) for it.
        self.assertGreater(delay, 0, "shutdown_delay keeps serving while the endpoint goes")
        sleep = 0
        pre = self.container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if pre[:1] == ["sleep"]:
            sleep = int(pre[1])
        self.assertGreater(grace, sleep + delay + seconds("drain_timeout", "10s"),
                           "preStop sleep + shutdown_delay + drain_timeout must end before SIGKILL")

if __name__ == "__main__":
    c.main()
