#!/usr/bin/env python3
"""wrk -t2 -c64 through grelay in front of nginx: no socket errors (connect, read,
write, timeout), no non-2xx responses, and a request count of the same order of
magnitude as wrk straight at nginx (speed itself is bench/'s business)."""

import shutil

import harness as h


class WrkNginxTest(h.GrelayTest):
    def test_wrk_through_grelay_has_no_errors(self):
        why = h.NginxServer.available() or ("" if shutil.which("wrk") else "wrk is not installed")
        if why:
            self.skipTest(why)
        duration = "5s" if h.SCALE >= 1 else "3s"
        with h.NginxServer(body=b"grelay" * 2000) as nginx:
            direct = h.run_wrk(f"http://{nginx.address}/{nginx.FILE_NAME}", duration=duration)
            h.log(f"direct: {direct.requests} requests, socket errors {direct.socket_errors}")
            self.assertGreater(direct.requests, 0, direct.output)
            cfg = h.Config()
            cfg.upstream("nginx", [nginx.address])
            port = cfg.listener("web", "nginx")
            with h.Grelay(cfg):
                via = h.run_wrk(f"http://127.0.0.1:{port}/{nginx.FILE_NAME}", duration=duration)
                h.log(f"through grelay: {via.requests} requests, connect {via.connect_errors}, "
                      f"read {via.read_errors}, write {via.write_errors}, "
                      f"timeout {via.timeout_errors}, non-2xx {via.non_2xx}")
                self.assertEqual(via.exit_code, 0, via.output)
                self.assertEqual(via.socket_errors, 0, via.output)
                self.assertEqual(via.non_2xx, 0, via.output)
                # Same order of magnitude (a sanitizer build is allowed to be slower).
                factor = 30 if h.SANITIZED else 10
                self.assertGreater(via.requests * factor, direct.requests,
                                   f"{via.requests} requests through grelay vs "
                                   f"{direct.requests} direct\n{via.output}")


if __name__ == "__main__":
    h.main()
