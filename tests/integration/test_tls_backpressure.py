#!/usr/bin/env python3
"""Back-pressure on TLS sessions (issue 5 item 5, copy path).

- Many TLS clients that stop reading while their upstream floods them: with a small
  buffer_pool, the copy path's buffers (plaintext and ciphertext) run short. Like
  plaintext sessions (which wait for receive buffers), TLS sessions must wait, not be
  reset: every client then reads its whole stream byte for byte.
- The same load with plaintext clients, as the reference.
"""

import socket
import threading
import time

import harness as h

SESSIONS = 40
TOTAL = 8 * h.MiB
PAUSE = 1.5  # seconds each client reads nothing


class TlsBackpressureTest(h.TlsTest):
    def _run(self, tls: bool):
        total = h.scaled(TOTAL, 4 * h.MiB)
        with h.FloodServer(total, seed=55) as flood:
            cfg = h.Config(workers=1, buffer_pool="1MiB")
            cfg.with_admin()
            cfg.upstream("app", [flood.address])
            kw = {"tls": {"cert": self.certs.server[0], "key": self.certs.server[1]}} if tls \
                else {}
            port = cfg.listener("web", "app", **kw)
            ctx = h.tls_client_context(self.certs.ca)
            barrier = threading.Barrier(SESSIONS)

            def client(i):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                s.settimeout(30)
                s.connect(("127.0.0.1", port))
                t = ctx.wrap_socket(s, server_hostname="localhost") if tls else s
                barrier.wait(30)
                time.sleep(PAUSE)  # the upstream floods, nobody reads
                checker = h.Checker(h.Stream(55, total))
                end = "eof"
                try:
                    while True:
                        d = t.recv(256 * h.KiB)
                        if not d:
                            break
                        checker.feed(d)
                except OSError as e:
                    end = repr(e)
                t.close()
                return f"client {i}: {checker.describe()}, end={end}" \
                    if not (checker.complete and end == "eof") else None

            with h.Grelay(cfg) as g:
                results = h.run_concurrently(client, [(i,) for i in range(SESSIONS)])
                bad = [r for r in results if r is not None]
                self.assertEqual(bad, [], f"{len(bad)} of {SESSIONS} sessions lost bytes:\n"
                                 + "\n".join(map(str, bad[:10])))
                self.assertEqual(g.metric("grelay_session_resets_total", listener="web"), 0)

    def test_slow_tls_clients_wait_for_buffers_instead_of_being_reset(self):
        self._run(tls=True)

    def test_slow_plaintext_clients_wait_for_buffers(self):
        self._run(tls=False)


if __name__ == "__main__":
    h.main()
