#!/usr/bin/env python3
"""SIGHUP reloads the configuration without dropping open sessions: listener, upstream
and mirror changes apply to new sessions, sessions already open finish byte-exact on the
old configuration, a broken file keeps the running configuration, TLS certificates are
reloaded, counters continue; a reload to fewer workers keeps every listening socket
and loses no connection; and [server] user drops root after binding."""

import os
import pwd
import signal
import ssl
import threading
import time

import harness as h


def write(path, text):
    with open(path, "w") as f:
        f.write(h.inject_server_defaults(text))


class ReloadTest(h.GrelayTest):
    def reload(self, g, expect):
        before = g.log().count(expect)
        g.send_signal(signal.SIGHUP)
        self.assertTrue(h.wait_for(lambda: g.log().count(expect) > before, 10),
                        f"no '{expect}' after SIGHUP:\n{g.log_tail()}")

    def test_admin_listen_follows_a_reload(self):
        """[admin] listen follows SIGHUP: metrics and probes move to the new port and the
        old one closes; a port that cannot be bound keeps the old one (logged) and the next
        SIGHUP tries again; without [admin] nothing is served; the same port on another
        address is taken over. Counters go on across every move."""
        def served(port, host="127.0.0.1"):
            try:
                return h.parse_metrics(h.scrape_metrics(port, host=host, timeout=2.0))
            except OSError:
                return None

        def accepted(metrics):
            return metrics[("grelay_connections_total", (("listener", "web"),))]

        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            first = cfg.with_admin()
            web = cfg.listener("web", "app")
            with h.Grelay(cfg) as g:
                self.assertTrue(h.stream_session(web, h.Stream(1, 32 * h.KiB)).ok)
                self.assertEqual(accepted(served(first)), 1)

                second = cfg.with_admin()
                write(g.config_path, cfg.render())
                self.reload(g, f"SIGHUP: metrics on http://127.0.0.1:{second}/metrics")
                self.assertEqual(accepted(served(second)), 1)
                self.assertIsNone(served(first), "the old admin port still answers")
                with h.urllib.request.urlopen(f"http://127.0.0.1:{second}/ready",
                                              timeout=2) as r:
                    self.assertEqual(r.status, 200)

                # A port taken by another process: the metrics stay where they are.
                with h.socket.socket() as busy:
                    busy.bind(("127.0.0.1", 0))
                    busy.listen()
                    taken = busy.getsockname()[1]
                    cfg.with_admin(taken)
                    write(g.config_path, cfg.render())
                    self.reload(g, f"metrics stay on 127.0.0.1:{second}")
                    self.assertTrue(h.stream_session(web, h.Stream(2, 32 * h.KiB)).ok)
                    self.assertEqual(accepted(served(second)), 2)
                # Freed: the next SIGHUP (same file) takes it.
                self.reload(g, f"SIGHUP: metrics on http://127.0.0.1:{taken}/metrics")
                self.assertEqual(accepted(served(taken)), 2)
                self.assertIsNone(served(second))

                cfg.admin = None
                write(g.config_path, cfg.render())
                self.reload(g, "metrics and probes are no longer served")
                self.assertIsNone(served(taken))

                # Back, then the same port on every address: the old socket is let go first.
                cfg.with_admin(first)
                write(g.config_path, cfg.render())
                self.reload(g, f"SIGHUP: metrics on http://127.0.0.1:{first}/metrics")
                cfg.admin = {"listen": f"0.0.0.0:{first}"}
                write(g.config_path, cfg.render())
                self.reload(g, f"SIGHUP: metrics on http://0.0.0.0:{first}/metrics")
                self.assertTrue(h.stream_session(web, h.Stream(3, 32 * h.KiB)).ok)
                self.assertEqual(accepted(served(first)), 3)
                self.assertEqual(g.log().count(" ERROR "), 1, g.log())  # the taken port

    def test_reload_applies_changes_and_keeps_open_sessions(self):
        with h.EchoServer() as echo_a, h.EchoServer() as echo_b, h.SinkServer() as sink:
            cfg = h.Config()
            cfg.upstream("app", [echo_a.address])
            admin = cfg.with_admin()
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            # A long session, streaming across the reload.
            long_result = {}

            def long_session():
                long_result["r"] = h.stream_session(port, h.Stream(7, 6 * h.MiB),
                                                    send_pause=0.05, timeout=60)

            t = threading.Thread(target=long_session)
            t.start()
            time.sleep(0.5)

            port2 = h.free_port()
            write(g.config_path, cfg.render().replace(echo_a.address, echo_b.address) + f"""
[[listener]]
name = "second"
listen = "127.0.0.1:{port2}"
upstream = "app"

  [[listener.mirror]]
  name = "copy"
  address = "{sink.address}"
""")
            self.reload(g, "SIGHUP: reloaded")
            g.addresses.append(("127.0.0.1", port2))
            # New sessions use the new upstream; the new listener and its mirror work.
            r = h.stream_session(port, h.Stream(1, 256 * h.KiB))
            self.assertTrue(r.ok, str(r))
            r2 = h.stream_session(port2, h.Stream(2, 300 * h.KiB))
            self.assertTrue(r2.ok, str(r2))
            self.assertTrue(h.wait_for(lambda: len(echo_b.conns) >= 2, 5),
                            "new sessions did not go to the new upstream")
            self.assertTrue(h.wait_for(lambda: any(c.received == 300 * h.KiB
                                                   for c in sink.conns), 5),
                            "the new mirror did not get the new listener's bytes")
            t.join(60)
            self.assertTrue(long_result["r"].ok, f"session open across the reload: {long_result['r']}")
            self.assertEqual(len(echo_a.conns), 1, "only the long session used the old upstream")
            # The old generation retires once its session ended; counters continue.
            self.assertTrue(h.wait_for(lambda: "older configuration generation finished" in g.log(), 10))
            m = h.parse_metrics(h.scrape_metrics(admin))
            self.assertEqual(m[("grelay_connections_total", (("listener", "web"),))], 2)
            self.assertEqual(m[("grelay_connections_total", (("listener", "second"),))], 1)
            g.stop()

    def test_fewer_workers_keep_every_listening_socket_and_lose_no_connection(self):
        # Each worker has its own SO_REUSEPORT socket. A reload to fewer workers must not
        # close the sockets of the workers that go away: a closed listening socket resets
        # every connection waiting in its accept queue. Clients connect all along.
        with h.EchoServer() as echo:
            cfg = h.Config(workers=4)
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            self.assertEqual(len(h._listening_inodes(port)), 4)
            stop = threading.Event()
            outcome = {"sessions": 0, "bad": []}

            def clients():
                seed = 0
                while not stop.is_set():
                    batch = [(port, h.Stream(seed + i, 4 * h.KiB)) for i in range(16)]
                    seed += 16
                    for r in h.run_concurrently(h.stream_session, batch,
                                                kwargs_list=[{"timeout": 30}] * 16):
                        outcome["sessions"] += 1
                        if not r.ok:
                            outcome["bad"].append(str(r))

            t = threading.Thread(target=clients)
            t.start()
            try:
                for workers in (2, 1, 3):
                    # Clients got through before each reload (and after the last one).
                    seen = outcome["sessions"]
                    self.assertTrue(h.wait_for(lambda: outcome["sessions"] >= seen + 32, 60))
                    cfg.server["workers"] = workers
                    write(g.config_path, cfg.render())
                    self.reload(g, "SIGHUP: reloaded")
                    # Every socket of the group is still there (a socket per worker at most
                    # when the count grows again: the extra workers share them).
                    self.assertEqual(len(h._listening_inodes(port)), 4,
                                     f"listening sockets after the reload to {workers}")
                seen = outcome["sessions"]
                self.assertTrue(h.wait_for(lambda: outcome["sessions"] >= seen + 32, 60))
            finally:
                stop.set()
                t.join(60)
            h.log(f"{outcome['sessions']} sessions across three reloads")
            self.assertEqual(outcome["bad"], [], "\n".join(outcome["bad"][:5]))
            r = h.stream_session(port, h.Stream(99, 64 * h.KiB))
            self.assertTrue(r.ok, str(r))
            g.stop()

    def test_invalid_file_keeps_the_running_configuration(self):
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            cfg.with_admin()
            g = h.Grelay(cfg).start()

            def reloads(result):
                return g.metric("grelay_config_reloads_total", cause="sighup", result=result)

            self.assertEqual(g.metric("grelay_config_last_reload_successful"), 1)
            good = open(g.config_path).read()
            write(g.config_path, good + "\nbogus_key = 1\n")
            self.reload(g, "keeping the running configuration")
            # The errors are logged after the line reload() waits for.
            self.assertTrue(h.wait_for(lambda: "unknown key 'bogus_key'" in g.log(), 10), g.log())
            self.assertEqual((reloads("failed"), reloads("ok")), (1, 0))
            self.assertEqual(g.metric("grelay_config_last_reload_successful"), 0)
            r = h.stream_session(port, h.Stream(3, 128 * h.KiB))
            self.assertTrue(r.ok, str(r))
            # An address already taken by someone else: refused as a whole, still serving.
            with h.EchoServer() as squatter:
                write(g.config_path, good + f"""
[[listener]]
name = "taken"
listen = "{squatter.address}"
upstream = "app"
""")
                self.reload(g, "cannot apply")
            r = h.stream_session(port, h.Stream(4, 128 * h.KiB))
            self.assertTrue(r.ok, str(r))
            self.assertEqual(reloads("failed"), 2)
            # A good file again, with a session open across it: two generations until the
            # session ends.
            held = h.connect(port)
            held.sendall(b"held")
            self.assertEqual(held.recv(16), b"held")
            write(g.config_path, good)
            self.reload(g, "SIGHUP: reloaded")
            self.assertEqual((reloads("failed"), reloads("ok")), (2, 1))
            self.assertEqual(g.metric("grelay_config_last_reload_successful"), 1)
            self.assertEqual(g.metric("grelay_config_generations"), 2)
            held.close()
            self.assertTrue(h.wait_for(lambda: g.metric("grelay_config_generations") == 1, 10))
            g.stop()

    def test_tls_certificates_are_reloaded(self):
        certs = h.Certs()
        self.addCleanup(certs.cleanup)
        first, second = certs.server, certs.upstream  # both for localhost, different keys
        with h.EchoServer() as echo:
            cfg = h.Config()
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app", tls={"cert": first[0], "key": first[1]})
            g = h.Grelay(cfg).start()

            def serial():
                ctx = ssl.create_default_context(cafile=certs.ca)
                with ctx.wrap_socket(h.connect(port), server_hostname="localhost") as s:
                    return s.getpeercert()["serialNumber"]

            s1 = serial()
            write(g.config_path, open(g.config_path).read().replace(first[0], second[0])
                  .replace(first[1], second[1]))
            self.reload(g, "SIGHUP: reloaded")
            s2 = serial()
            self.assertNotEqual(s1, s2, "the new certificate is not served after SIGHUP")
            g.stop()


class UserTest(h.GrelayTest):
    def test_drops_root_after_binding(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to switch users")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user 'nobody'")
        with h.EchoServer() as echo:
            cfg = h.Config(user="nobody")
            cfg.upstream("app", [echo.address])
            port = cfg.listener("web", "app")
            g = h.Grelay(cfg).start()
            # The sockets listen before the switch: wait for grelay to say it switched.
            self.assertTrue(h.wait_for(lambda: "running as user nobody" in g.log(), 10), g.log())
            with open(f"/proc/{g.pid}/status") as f:
                uids = [line for line in f if line.startswith("Uid:")][0].split()[1:]
            self.assertEqual({int(u) for u in uids}, {nobody.pw_uid}, "real/effective/saved uid")
            r = h.stream_session(port, h.Stream(5, 512 * h.KiB))
            self.assertTrue(r.ok, str(r))
            g.stop()

    def test_unknown_user_is_a_startup_error(self):
        with h.EchoServer() as echo:
            cfg = h.Config(user="no-such-user-here")
            cfg.upstream("app", [echo.address])
            cfg.listener("web", "app")
            g = h.Grelay(cfg, expect_exit=1)
            g.start(wait=False)
            self.assertEqual(g.wait_exit(10), 1)
            self.assertIn("no such user", g.log())


if __name__ == "__main__":
    h.main()
