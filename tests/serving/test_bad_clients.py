"""Bad input and bad clients against `starattn serve-local`: each gets the right JSON error (or a
timeout) and the server keeps serving; a client that hangs up mid-stream cancels its request and
its KV is freed (seen in /metrics); a short randomized fuzzing run of the live request parser."""
import json
import os
import random
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

GOOD = {"prompt": "Some context to read.", "query": "What?", "max_tokens": 2, "ignore_eos": True}


class BadClientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = su.Server("--max-body-bytes", "65536", "--max-context-tokens", "256",
                               "--header-timeout-ms", "1000", "--body-timeout-ms", "1000")
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def assert_still_serving(self):
        self.assertTrue(self.server.alive())
        status, _, body = su.http(self.port, "POST", "/v1/completions", GOOD)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["usage"]["completion_tokens"], 2)

    def assert_error(self, status, body, want_status, param=None, code=None):
        self.assertEqual(status, want_status, body)
        err = json.loads(body)["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"})
        self.assertTrue(err["message"])
        if param is not None:
            self.assertEqual(err["param"], param)
        if code is not None:
            self.assertEqual(err["code"], code)
        return err

    def test_malformed_json(self):
        for body in [b"{", b"not json", b"[1,2,3]", b"", b'{"prompt": "x", "query": "q",}', b"\xff\xfe"]:
            status, _, out = su.http(self.port, "POST", "/v1/completions", body)
            self.assert_error(status, out, 400)
        self.assert_still_serving()

    def test_wrong_types(self):
        for field, value in [("max_tokens", "10"), ("temperature", "hot"), ("top_p", [1]), ("stream", 1),
                             ("stop", 5), ("block_size", 1.5), ("query", 7), ("seed", "x")]:
            status, _, out = su.http(self.port, "POST", "/v1/completions", dict(GOOD, **{field: value}))
            self.assert_error(status, out, 400, param=field)
        status, _, out = su.http(self.port, "POST", "/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": 5}]})
        self.assert_error(status, out, 400, param="messages[0].content")
        self.assert_still_serving()

    def test_unknown_fields(self):
        # Ignored, as OpenAI's SDKs and newer clients send fields this server does not define.
        status, _, out = su.http(self.port, "POST", "/v1/completions", dict(GOOD, frobnicate=True))
        self.assertEqual(status, 200, out)
        status, _, out = su.http(self.port, "POST", "/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "x"}], "prompt": "p", "max_tokens": 1})
        self.assertEqual(status, 200, out)
        self.assert_still_serving()

    def test_oversized_bodies(self):
        # A body over the limit, sent whole.
        big = json.dumps(dict(GOOD, prompt="x" * 100000)).encode()
        s = su.raw_socket(self.port)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(big)).encode() + b"\r\n\r\n" + big)
        status, body = su.read_http_response(s)
        s.close()
        self.assert_error(status, body, 413, code="request_too_large")
        # One that announces 1 GB and sends a little: refused from the headers alone.
        s = su.raw_socket(self.port)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{\"prompt\":")
        status, body = su.read_http_response(s)
        s.close()
        self.assert_error(status, body, 413)
        # Headers over their limit.
        s = su.raw_socket(self.port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        status, body = su.read_http_response(s)
        s.close()
        self.assert_error(status, body, 431)
        self.assert_still_serving()

    def test_context_larger_than_capacity(self):
        status, _, out = su.http(self.port, "POST", "/v1/completions", dict(GOOD, prompt="y" * 1000))
        err = self.assert_error(status, out, 400, code="context_length_exceeded")
        self.assertIn("256", err["message"])
        # Streaming requests get the same status before any event is sent.
        status, _, out = su.http(self.port, "POST", "/v1/completions", dict(GOOD, prompt="y" * 1000, stream=True))
        self.assert_error(status, out, 400, code="context_length_exceeded")
        # Impossible block sizes come from the engine as 400 too.
        status, _, out = su.http(self.port, "POST", "/v1/completions", dict(GOOD, block_size=4, anchor_size=9))
        self.assert_error(status, out, 400)
        self.assert_still_serving()

    def test_slow_client_gets_a_timeout(self):
        # Half the headers, then silence: 408 once the 1 s header limit passes.
        s = su.raw_socket(self.port, timeout=10)
        t0 = time.time()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        status, body = su.read_http_response(s)
        s.close()
        self.assert_error(status, body, 408, code="request_timeout")
        self.assertLess(time.time() - t0, 8)
        # Whole headers, half the body.
        s = su.raw_socket(self.port, timeout=10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
        status, body = su.read_http_response(s)
        s.close()
        self.assert_error(status, body, 408)
        # An idle connection that never sent a byte is just closed.
        s = su.raw_socket(self.port, timeout=10)
        self.assertEqual(s.recv(100), b"")
        s.close()
        self.assert_still_serving()

    def test_wrong_paths_and_methods(self):
        status, _, out = su.http(self.port, "GET", "/v1/completions")
        self.assert_error(status, out, 405)
        status, _, out = su.http(self.port, "POST", "/v2/anything", {})
        self.assert_error(status, out, 404)
        status, _, out = su.http(self.port, "GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(out)["status"], "ok")

    def test_hangup_mid_stream_cancels_and_frees_kv(self):
        s = su.raw_socket(self.port)
        # As long as the model's positions allow (4096), far more than are generated before the
        # hang-up is seen.
        body = json.dumps({"prompt": "context " * 20, "query": "go on", "max_tokens": 3800,
                           "ignore_eos": True, "stream": True}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 5:
            chunk = s.recv(4096)
            self.assertTrue(chunk, "the stream ended early")
            got += chunk
        held = su.metrics(self.port)
        self.assertGreater(held['starattn_kv_tokens_held{worker="engine0"}'], 0)
        self.assertEqual(held['starattn_active_requests{worker="engine0"}'], 1)
        s.close()
        su.wait_for(lambda: su.metrics(self.port)['starattn_active_requests{worker="engine0"}'] == 0,
                    what="the request to be cancelled")
        m = su.metrics(self.port)
        self.assertEqual(m['starattn_kv_tokens_held{worker="engine0"}'], 0)
        self.assertGreaterEqual(m['starattn_requests_total{endpoint="/v1/completions",status="499"}'], 1)
        self.assertLess(m["starattn_generated_tokens_total"], 3000)
        self.assert_still_serving()

    def test_randomized_requests_fuzz_the_parser(self):
        rng = random.Random(4242)
        seeds = [json.dumps(GOOD), json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
                 json.dumps(dict(GOOD, stop=["a", "b"], top_k=3, seed=1, stream=True))]
        alphabet = '{}[]":,0123456789-.eE truefalsn\\u\x00\xe9abc'
        deadline = time.time() + 4
        n = 0
        while time.time() < deadline and n < 400:
            body = list(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                if not body:
                    break
                pos = rng.randrange(len(body))
                op = rng.randrange(3)
                if op == 0:
                    body[pos] = rng.choice(alphabet)
                elif op == 1:
                    body.insert(pos, rng.choice(alphabet))
                else:
                    del body[pos]
            data = "".join(body).encode("utf-8", "surrogatepass")
            path = rng.choice(["/v1/completions", "/v1/chat/completions"])
            status, _, out = su.http(self.port, "POST", path, data)
            self.assertIn(status, (200, 400), out)
            if status == 400:
                self.assert_error(status, out, 400)
            n += 1
        self.assertGreater(n, 20)
        self.assert_still_serving()


if __name__ == "__main__":
    su.run(sys.modules[__name__])
