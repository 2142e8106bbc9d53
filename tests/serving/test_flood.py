"""A bounded flood against a cluster's head (`starattn serve --listen --http`, one worker): 2,000
idle connections to the worker port, then 2,000 to the HTTP port, from one address (127.0.0.2).
While each flood is held, a normal request from another address (127.0.0.1) is answered in
time; the per-peer cap refuses the excess (counted in /metrics by port and reason); after the
short idle timeout the flood's connections are closed, while the real worker, whose heartbeats
keep its connection busy, stays registered and serves."""
import os
import resource
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

FLOOD = 2000
PER_PEER = 150  # per-peer cap of both ports in this test
IDLE_MS = 1500
REQUEST = {"model": "tiny", "prompt": "Flooded servers still answer. " * 4, "query": "Do they?",
           "max_tokens": 4, "ignore_eos": True}
ANSWER_WITHIN_S = 15.0  # a 4-token answer of the tiny model takes well under a second unflooded
SLACK = 3  # connections of the test's own requests that may still be closing


def open_flood(port, count):
    """`count` connections to 127.0.0.1:port from 127.0.0.2 that never send a byte."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.2", 0))
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", port))  # the kernel completes it; the acceptor decides afterwards
        except ConnectionResetError:
            # Accepted and refused (reset) before connect() returned here: counted all the same.
            s.close()
            continue
        socks.append(s)
    return socks


def closed_by_peer(sock):
    """True when the server closed or reset this connection. Whatever it sent first is read away
    (through the worker port, the head's middleman greets each connection)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def close_all(socks):
    for s in socks:
        s.close()


class FloodTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = FLOOD + 512
        if hard != resource.RLIM_INFINITY and hard < want:
            raise unittest.SkipTest(f"the file descriptor limit ({hard}) is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
        try:
            probe = socket.socket()
            probe.bind(("127.0.0.2", 0))
            probe.close()
        except OSError as e:
            raise unittest.SkipTest(f"cannot use 127.0.0.2 as a source address: {e}")
        limits = ["--max-connections-per-peer", str(PER_PEER), "--max-connections", "1000",
                  "--idle-timeout-ms", str(IDLE_MS),
                  "--worker-max-connections-per-peer", str(PER_PEER), "--worker-max-connections", "1000",
                  "--worker-idle-timeout-ms", str(IDLE_MS)]
        cls.cluster = su.Cluster(workers=1, head_args=limits, threads=1)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()

    def timed_request(self):
        start = time.time()
        status, _, body = su.http(self.cluster.port, "POST", "/v1/completions", REQUEST, timeout=60)
        took = time.time() - start
        self.assertEqual(status, 200, body)
        self.assertLess(took, ANSWER_WITHIN_S)
        return took

    def refused(self, port_name):
        m = su.metrics(self.cluster.port)
        return m.get(f'starattn_connections_refused_total{{port="{port_name}",reason="max_per_peer"}}', 0)

    def open_on(self, port_name):
        return su.metrics(self.cluster.port).get(f'starattn_port_connections{{port="{port_name}"}}', 0)

    def flood_and_check(self, port, port_name, admitted_besides_flood):
        before = self.refused(port_name)
        socks = open_flood(port, FLOOD)
        try:
            # Every connection beyond the cap is refused, and only the cap's worth stay open.
            su.wait_for(lambda: self.refused(port_name) - before >= FLOOD - PER_PEER, 30,
                        f"{FLOOD - PER_PEER} refusals on the {port_name} port")
            self.assertEqual(self.refused(port_name) - before, FLOOD - PER_PEER)
            self.assertLessEqual(self.open_on(port_name), PER_PEER + admitted_besides_flood + SLACK)
            took = self.timed_request()
            sys.stderr.write(f"{port_name} flood of {FLOOD}: a request took {took:.3f} s\n")
            # Silent past the idle timeout, the admitted flood connections are closed.
            su.wait_for(lambda: self.open_on(port_name) <= admitted_besides_flood + SLACK, 10 + IDLE_MS / 1000,
                        f"the idle {port_name} connections to be closed")
            self.assertTrue(all(closed_by_peer(s) for s in socks))
        finally:
            close_all(socks)

    def test_1_worker_port_flood(self):
        # The worker's own connection stays: its heartbeats keep it from being idle.
        self.flood_and_check(self.cluster.head_port, "worker", admitted_besides_flood=1)
        self.assertEqual(len(self.cluster.kv_held()), 1)
        self.timed_request()

    def test_2_http_flood(self):
        # Each /metrics scrape and timed request is a connection of its own, closed at once.
        self.flood_and_check(self.cluster.port, "http", admitted_besides_flood=1)
        self.timed_request()


if __name__ == "__main__":
    su.run(sys.modules[__name__])
