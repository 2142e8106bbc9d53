"""`starattn client` over the framed TCP port streams the same tokens the HTTP endpoint's greedy
answer is made of, and reports errors with the service's code."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

CONTEXT = "The framed protocol carries protobuf frames with a length prefix. " * 2


class TcpClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = su.Server("--max-context-tokens", "300", tcp=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def client(self, context, *extra):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(context)
        try:
            return subprocess.run([su.cli(), "client", "--connect", f"127.0.0.1:{self.server.tcp_port}",
                                   "--context-file", f.name, "--query", "What carries frames?"] + list(extra),
                                  capture_output=True, timeout=60)
        finally:
            os.unlink(f.name)

    def test_streams_tokens_like_http(self):
        r = self.client(CONTEXT, "--max-tokens", "9", "--ignore-eos", "--output", "ids")
        self.assertEqual(r.returncode, 0, r.stderr)
        ids = [int(t) for t in r.stdout.split()]
        self.assertEqual(len(ids), 9)
        self.assertIn(b"finish: length", r.stderr)
        # The same request over HTTP: its text is the bytes of those ids (byte tokenizer).
        status, _, body = su.http(self.server.port, "POST", "/v1/completions",
                                  {"prompt": CONTEXT, "query": "What carries frames?", "max_tokens": 9,
                                   "ignore_eos": True})
        self.assertEqual(status, 200)
        text = json.loads(body)["choices"][0]["text"]
        expected = bytes(i for i in ids if i < 256).decode("utf-8", "replace")
        self.assertEqual(text, expected)

    def test_errors_name_the_code(self):
        r = self.client("z" * 1000, "--max-tokens", "2")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"capacity", r.stderr)
        r = self.client(CONTEXT, "--mode", "half")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"invalid_request", r.stderr)
        self.assertTrue(self.server.alive())


if __name__ == "__main__":
    su.run(sys.modules[__name__])
