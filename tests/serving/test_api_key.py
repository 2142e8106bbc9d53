"""`--api-key-env` protects every endpoint but /health, on both ports, as `serve-local --help` and
docs/SERVING.md say: HTTP wants the bearer token, the framed TCP port an Auth frame first, which
`starattn client --api-key-env` sends; without the key or with a wrong one the request is refused
with invalid_api_key, and the access log shows who was answered."""
import os
import secrets
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

KEY = secrets.token_hex(16)  # a fresh key each run
BODY = {"prompt": "Keys protect this server.", "query": "What protects it?", "max_tokens": 3, "ignore_eos": True}


class ApiKeyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.environ["STARATTN_TEST_KEY"] = KEY  # the server and the clients inherit it
        cls.server = su.Server("--api-key-env", "STARATTN_TEST_KEY", tcp=True)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def client(self, *extra, env_key=None):
        env = dict(os.environ)
        if env_key is not None:
            env["CLIENT_KEY"] = env_key
        return subprocess.run([su.cli(), "client", "--connect", f"127.0.0.1:{self.server.tcp_port}",
                               "--context", BODY["prompt"], "--query", BODY["query"], "--max-tokens", "3",
                               "--ignore-eos", "--output", "ids"] + list(extra),
                              capture_output=True, timeout=60, env=env)

    def test_the_help_says_what_the_key_protects(self):
        r = subprocess.run([su.cli(), "serve-local", "--help"], capture_output=True, timeout=30)
        self.assertIn(b"every endpoint but /health, framed TCP an Auth frame first", r.stdout)
        r = subprocess.run([su.cli(), "client", "--help"], capture_output=True, timeout=30)
        self.assertIn(b"--api-key-env VAR", r.stdout)

    def test_http_needs_the_bearer_token_except_for_health(self):
        for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None),
                                   ("POST", "/v1/completions", BODY)]:
            status, headers, _ = su.http(self.server.port, method, path, body)
            self.assertEqual(status, 401, path)
            self.assertEqual(headers.get("WWW-Authenticate"), "Bearer")
            status, _, _ = su.http(self.server.port, method, path, body,
                                   headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
            self.assertEqual(status, 401, path)
            status, _, out = su.http(self.server.port, method, path, body, headers={"Authorization": "Bearer " + KEY})
            self.assertEqual(status, 200, out)
        status, _, _ = su.http(self.server.port, "GET", "/health")
        self.assertEqual(status, 200)

    def test_the_framed_port_needs_the_auth_frame(self):
        r = self.client()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"invalid_api_key", r.stderr)
        self.assertIn(b"send an Auth frame first", r.stderr)
        r = self.client("--api-key-env", "CLIENT_KEY", env_key=KEY + "x")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"wrong API key", r.stderr)
        r = self.client("--api-key-env", "CLIENT_KEY", env_key=KEY)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(r.stdout.split()), 3)
        r = self.client("--api-key-env", "UNSET_VARIABLE_FOR_THIS_TEST")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"--api-key-env UNSET_VARIABLE_FOR_THIS_TEST: the variable is empty or unset", r.stderr)
        # The server logs one access line per answered request; the key never appears in it.
        su.wait_for(lambda: "endpoint=tcp status=ok tokens_in=" in self.server.log(), 10, "the access line")
        self.assertNotIn(KEY, self.server.log())


if __name__ == "__main__":
    su.run(sys.modules[__name__])
