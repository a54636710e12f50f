#!/usr/bin/env python3
"""`grelay -c F --check` on TLS settings (issue 5 item 5.6).

Each bad setting -- a missing cert or key file, a cert/key mismatch, garbage PEM in the
cert, key or ca file, a bad TLS 1.2 cipher string or TLS 1.3 suite list, an unknown
min_version -- makes --check (and a run) exit 1 with `FILE:LINE:COL: message` lines
pointing at the config line of the setting, the message naming the offending file or
value. A config with every TLS key set correctly passes.
"""

import os
import re
import shutil
import tempfile

import harness as h

LINE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")
ERROR_RE = re.compile(r"(?P<file>/\S+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")

# Line 9 holds the listener's tls table, line 4 the upstream's tls setting.
TEMPLATE = """\
[server]
workers = 1
[upstream.app]
tls = {upstream_tls}
servers = ["127.0.0.1:9"]
[[listener]]
name = "web"
listen = "127.0.0.1:{port}"
tls = {listener_tls}
upstream = "app"
"""
TLS_LINE, UPSTREAM_LINE = 9, 4


def toml_table(d: dict) -> str:
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in d.items()) + " }"


class TlsCheckTest(h.TlsTest):
    needs_uring = False

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="grelay-tls-check-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.garbage = os.path.join(self.dir, "garbage.pem")
        with open(self.garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all !!!\n"
                    "-----END CERTIFICATE-----\n")
        self.empty = os.path.join(self.dir, "empty.pem")
        open(self.empty, "w").close()

    def config(self, listener_tls: dict | None = None, upstream_tls="false") -> str:
        tls = {"cert": self.certs.server[0], "key": self.certs.server[1]}
        tls.update(listener_tls or {})
        text = TEMPLATE.format(port=h.free_port(), listener_tls=toml_table(tls),
                               upstream_tls=upstream_tls)
        path = os.path.join(self.dir, f"grelay-{len(os.listdir(self.dir))}.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def assert_rejected(self, path: str, line: int, *words: str) -> None:
        for args in (["-c", path, "--check"], ["-c", path]):
            r = h.run_grelay(args, timeout=30)
            self.assertEqual(r.returncode, 1, f"{args}: {r.stdout}{r.stderr}")
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            if "--check" in args:
                parsed = [LINE_RE.match(l) for l in lines]
                self.assertTrue(all(parsed), f"lines not in FILE:LINE:COL: form:\n{r.stderr}")
            else:
                # A run logs them (timestamp, level) before exiting 1.
                parsed = [ERROR_RE.search(l) for l in lines]
            errors = [m for m in parsed if m and m["file"] == path]
            self.assertTrue(errors, f"{args}: no {path}:LINE:COL: line in\n{r.stderr}")
            self.assertIn(line, [int(m["line"]) for m in errors],
                          f"{args}: no error on line {line}:\n{r.stderr}")
            msg = " ".join(m["msg"] for m in errors if int(m["line"]) == line)
            for w in words:
                self.assertIn(w, msg, f"{args}: message should contain {w!r}:\n{r.stderr}")
            self.assertTrue(all(int(m["col"]) >= 1 for m in errors))

    def test_valid_tls_config_passes(self):
        path = self.config({"handshake_timeout": "2s", "min_version": "1.3",
                            "ciphers": "ECDHE-RSA-AES128-GCM-SHA256",
                            "ciphersuites": "TLS_AES_128_GCM_SHA256"},
                           upstream_tls=toml_table({"ca": self.certs.ca, "sni": "localhost"}))
        r = h.run_grelay(["-c", path, "--check"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_missing_cert_file(self):
        missing = os.path.join(self.dir, "nope", "cert.pem")
        self.assert_rejected(self.config({"cert": missing}), TLS_LINE, missing, "cert")

    def test_missing_key_file(self):
        missing = os.path.join(self.dir, "nope.key")
        self.assert_rejected(self.config({"key": missing}), TLS_LINE, missing, "key")

    def test_cert_and_key_that_do_not_match(self):
        key = self.certs.upstream[1]
        self.assert_rejected(self.config({"key": key}), TLS_LINE, key, self.certs.server[0],
                             "does not match")

    def test_garbage_pem_in_the_cert_file(self):
        for bad in (self.garbage, self.empty):
            with self.subTest(bad):
                self.assert_rejected(self.config({"cert": bad}), TLS_LINE, bad, "certificate")

    def test_garbage_pem_in_the_key_file(self):
        self.assert_rejected(self.config({"key": self.garbage}), TLS_LINE, self.garbage, "key")

    def test_a_certificate_given_as_the_key(self):
        self.assert_rejected(self.config({"key": self.certs.server[0]}), TLS_LINE,
                             self.certs.server[0], "key")

    def test_bad_cipher_string(self):
        self.assert_rejected(self.config({"ciphers": "NOT-A-CIPHER:ALSO-BAD"}), TLS_LINE,
                             "NOT-A-CIPHER:ALSO-BAD", "ciphers")

    def test_bad_ciphersuites(self):
        self.assert_rejected(self.config({"ciphersuites": "TLS_NOPE_SHA1"}), TLS_LINE,
                             "TLS_NOPE_SHA1", "ciphersuites")

    def test_unknown_min_version(self):
        self.assert_rejected(self.config({"min_version": "1.1"}), TLS_LINE, "min_version",
                             "1.1")

    def test_garbage_pem_in_the_upstream_ca_file(self):
        self.assert_rejected(self.config(upstream_tls=toml_table({"ca": self.garbage})),
                             UPSTREAM_LINE, self.garbage, "CA")

    def test_missing_upstream_ca_file(self):
        missing = os.path.join(self.dir, "ca-missing.pem")
        self.assert_rejected(self.config(upstream_tls=toml_table({"ca": missing})),
                             UPSTREAM_LINE, missing, "ca")


if __name__ == "__main__":
    h.main()
