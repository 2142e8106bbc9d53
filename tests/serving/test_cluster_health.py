"""/health of a head with two `starattn worker` processes, over HTTP. A worker stopped with
SIGSTOP: a request placed on it before the head noticed fails naming it within the heartbeat
bound; /health then says `degraded` and names it; a request placed meanwhile runs on the other
worker only (KV on it, none on the stopped one, in every /metrics sample taken while it runs).
After SIGCONT it is admitted again: /health is `ok` and the next request holds KV on both."""
import json
import os
import signal
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

CONTEXT = "A stopped worker must not take new work; its peers answer instead. " * 5
QUERY = "Who answers?"
# The head marks a worker unhealthy after 5 s without a heartbeat (checked every 250 ms);
# the margin is for a loaded 2-core machine.
DEGRADED_WITHIN = 12.0


class ClusterHealthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = su.Cluster(workers=2)
        cls.files = tempfile.TemporaryDirectory(prefix="starattn-health-")
        cls.context_file = os.path.join(cls.files.name, "context.txt")
        with open(cls.context_file, "w") as f:
            f.write(CONTEXT)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        cls.files.cleanup()

    def complete(self, max_tokens):
        body = {"prompt": CONTEXT, "query": QUERY, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True}
        t0 = time.time()
        status, _, raw = su.http(self.cluster.port, "POST", "/v1/completions", body, timeout=60)
        return status, json.loads(raw), time.time() - t0

    def complete_sampled(self, max_tokens):
        """complete(), with the head's KV per worker sampled from /metrics while it runs."""
        seen, done = [], threading.Event()

        def sample():
            while not done.is_set():
                seen.append(self.cluster.kv_held())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            return self.complete(max_tokens) + (seen,)
        finally:
            done.set()
            sampler.join()

    def local_text(self, workers, max_tokens):
        ids = self.cluster.run_local(workers, "--context-file", self.context_file, "--query", QUERY,
                                     "--max-tokens", str(max_tokens), "--ignore-eos")
        self.assertEqual(len(ids), max_tokens)
        return su.byte_text(ids)

    def test_stopped_worker_is_degraded_gets_no_work_and_is_readmitted(self):
        c = self.cluster
        self.assertEqual(c.health()["status"], "ok")
        # Long enough to be sampled many times while it decodes, within the tiny model's
        # positions.
        tokens = 400
        expected = self.local_text(1, tokens)

        stopped = c.workers[1]
        t0 = time.time()
        stopped.send_signal(signal.SIGSTOP)
        try:
            # Placed before the head could notice: it waits on w1's encode and then fails with a
            # message naming w1, within the heartbeat bound (not the 30-minute deadline).
            status, body, elapsed = self.complete(8)
            self.assertEqual(status, 503, body)
            self.assertEqual(body["error"]["code"], "worker_failed", body)
            self.assertIn("w1", body["error"]["message"])
            self.assertLess(elapsed, DEGRADED_WITHIN)
            health = {}

            def degraded():
                nonlocal health
                health = c.health()
                return health["status"] == "degraded"

            su.wait_for(degraded, DEGRADED_WITHIN, "/health to say degraded")
            self.assertGreater(time.time() - t0, 2.0, "degraded before the heartbeat timeout could pass")
            self.assertEqual([u["worker"] for u in health["unhealthy_workers"]], ["w1/cpu"], health)
            why = health["unhealthy_workers"][0]["why"]
            self.assertIn("w1", why)
            self.assertIn("heartbeat", why)

            # Placed while w1 is stopped: it runs on w0 alone (KV there, none on w1 in any
            # sample) and gives the one-worker answer.
            status, body, elapsed, seen = self.complete_sampled(tokens)
            self.assertEqual(status, 200, body)
            self.assertLess(elapsed, 30)
            self.assertEqual(body["choices"][0]["text"], expected)
            self.assertTrue(any(s.get("w0/cpu", 0) > 0 for s in seen), seen)
            self.assertTrue(all(s.get("w1/cpu", 0) == 0 for s in seen), seen)
            self.assertEqual(su.metrics(c.port)['starattn_active_requests{worker="w1/cpu"}'], 0)
            self.assertEqual(c.health()["status"], "degraded")
        finally:
            stopped.send_signal(signal.SIGCONT)

        su.wait_for(lambda: c.health()["status"] == "ok", DEGRADED_WITHIN, "/health to say ok again")
        self.assertNotIn("unhealthy_workers", c.health())
        # Admitted again: the next request holds KV on both workers, and its answer is the same.
        status, body, _, seen = self.complete_sampled(tokens)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["text"], expected)
        self.assertTrue(any(s.get("w0/cpu", 0) > 0 and s.get("w1/cpu", 0) > 0 for s in seen), seen)
        su.wait_for(lambda: sum(c.kv_held().values()) == 0, 20, "the KV to be released")
        self.assertIsNone(stopped.poll(), "the stopped worker died:\n" + c.logs_text())


if __name__ == "__main__":
    su.run(sys.modules[__name__])
