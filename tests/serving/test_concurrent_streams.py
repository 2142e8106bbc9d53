"""16 concurrent streaming clients get the same answers as the same requests run one at a time
(greedy), each its own: no mixing of streams, no lost or duplicated tokens."""
import concurrent.futures
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

CLIENTS = 16


def request(i):
    body = {"prompt": f"Document {i}: " + ("abcdefghij"[i % 10] * (20 + 7 * i)),
            "query": f"Question number {i}?", "max_tokens": 24 + i % 8, "temperature": 0,
            "ignore_eos": True, "block_size": 32}
    if i % 2:
        body = {"_path": "/v1/chat/completions",
                "messages": [{"role": "user", "content": body["prompt"]},
                             {"role": "user", "content": body["query"]}],
                "max_tokens": body["max_tokens"], "temperature": 0, "ignore_eos": True}
    return body


class ConcurrentStreamsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Two engines so that requests really overlap, and room for all 16 in the queue.
        cls.server = su.Server("--engines", "2", "--io-threads", "4")

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_concurrent_answers_equal_sequential_ones(self):
        port = self.server.port
        sequential = [su.stream_completion(port, request(i))[0] for i in range(CLIENTS)]
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            concurrent_ = list(pool.map(lambda i: su.stream_completion(port, request(i))[0], range(CLIENTS)))
        for i in range(CLIENTS):
            self.assertEqual(concurrent_[i], sequential[i], f"client {i}")
        # Different requests, different answers: the comparison above is not vacuous.
        self.assertGreater(len(set(sequential)), CLIENTS // 2)
        m = su.metrics(port)
        self.assertEqual(m['starattn_requests_total{endpoint="/v1/completions",status="200"}'], CLIENTS)
        self.assertEqual(m['starattn_requests_total{endpoint="/v1/chat/completions",status="200"}'], CLIENTS)
        self.assertEqual(m["starattn_active_streams"], 0)
        # Both runs' tokens are in the latency histograms and the token counter.
        self.assertEqual(m["starattn_time_to_first_token_seconds_count"], 2 * CLIENTS)
        self.assertGreater(m["starattn_inter_token_latency_seconds_count"], 2 * CLIENTS * 20)
        self.assertEqual(m["starattn_generated_tokens_total"], 2 * sum(24 + i % 8 for i in range(CLIENTS)))


if __name__ == "__main__":
    su.run(sys.modules[__name__])
