#!/usr/bin/env python3
"""Back-pressure: upstreams flood (512 MiB offered each) while clients read 64 KiB every
few ms. grelay must pause reading the upstreams instead of buffering: its resident
memory stays below workers x buffer_pool + 32 MiB the whole time, and every byte the
clients read is exactly the flood's prefix."""

import threading

import harness as h

BUFFER_POOL = 8 * h.MiB
SLACK = 32 * h.MiB


class SlowClientMemoryTest(h.GrelayTest):
    def test_rss_stays_bounded_while_slow_clients_face_a_flood(self):
        clients = 4
        duration = 4.0
        with h.FloodServer(total=512 * h.MiB, seed=31) as flood:
            cfg = h.Config(buffer_pool="8MiB")
            cfg.upstream("app", [flood.address])
            port = cfg.listener("web", "app")
            with h.Grelay(cfg) as g:
                baseline = g.rss_kb() * 1024
                # A sanitizer build's runtime is large on its own: there the bound is on
                # the growth above what grelay held once it was up.
                floor = baseline if h.SANITIZED else 0
                bound = floor + h.WORKERS * BUFFER_POOL + SLACK
                samples = []
                lock = threading.Lock()

                def sample():
                    rss = g.rss_kb() * 1024
                    with lock:
                        samples.append(rss)
                    return rss

                results = h.run_concurrently(
                    h.slow_reader, [(port,)] * clients,
                    kwargs_list=[{"read_size": 64 * h.KiB, "interval": 0.005,
                                  "duration": duration, "expect": flood.stream,
                                  "on_tick": sample, "tick_every": 0.05}] * clients)
                peak = max(samples)
                h.log(f"RSS baseline {baseline / h.MiB:.1f} MiB, peak {peak / h.MiB:.1f} MiB "
                      f"over {len(samples)} samples, bound {bound / h.MiB:.1f} MiB; clients read "
                      f"{[round(r.received / h.MiB, 1) for r in results]} MiB; the flood sent "
                      f"{[round(c.sent / h.MiB, 1) for c in flood.conns]} MiB")
                for r in results:
                    self.assertTrue(r.ok_prefix, f"bytes read by a slow client: {r.check}")
                    self.assertEqual(r.end, "duration", f"the slow client's stream ended: {r.end}")
                    self.assertGreater(r.received, 1 * h.MiB, "the flood did not flow at all")
                self.assertLessEqual(peak, bound,
                                     f"grelay's RSS reached {peak / h.MiB:.1f} MiB, above the "
                                     f"bound {bound / h.MiB:.1f} MiB")
                for c in flood.conns:
                    # Offered 512 MiB: only what the client read plus bounded buffering left.
                    self.assertLess(c.sent, 256 * h.MiB, "the upstream was never paused")


if __name__ == "__main__":
    h.main()
