"""Shared helpers of the serving tests: a `starattn serve-local` on a tiny random model, raw HTTP
requests, server-sent-event parsing and /metrics scraping. Standard library only."""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest

SKIP = 77  # ctest's SKIP_RETURN_CODE for these tests


def cli():
    path = os.environ.get("STARATTN_CLI")
    if not path:
        sys.exit("set STARATTN_CLI to the starattn binary")
    return path


class Server:
    """`starattn serve-local` on a fresh tiny random model, HTTP (and TCP) on free ports."""

    def __init__(self, *extra, tcp=False):
        self.dir = tempfile.TemporaryDirectory(prefix="starattn-serving-")
        self.model = os.path.join(self.dir.name, "model")
        subprocess.run([cli(), "init-model", "--preset", "tiny", "--seed", "7", "--out", self.model],
                       check=True, stdout=subprocess.DEVNULL)
        args = [cli(), "serve-local", "--model", self.model, "--http", "127.0.0.1:0",
                "--threads", "1", "--io-threads", "2"] + list(extra)
        if tcp:
            args += ["--tcp", "127.0.0.1:0"]
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.port = self.tcp_port = None
        deadline = time.time() + 60
        while self.port is None or (tcp and self.tcp_port is None):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("serve-local exited early: " + self.proc.stderr.read())
            if time.time() > deadline:
                raise RuntimeError("serve-local did not print its addresses")
            m = re.match(r"(http|tcp)://[^:]+:(\d+)", line.strip())
            if m and m.group(1) == "http":
                self.port = int(m.group(2))
            elif m:
                self.tcp_port = int(m.group(2))
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.dir.cleanup()

    def alive(self):
        return self.proc.poll() is None


def http(port, method, path, body=None, headers=None, timeout=60):
    """One request on a fresh connection; returns (status, headers dict, body bytes)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    out = (r.status, dict(r.getheaders()), r.read())
    conn.close()
    return out


def stream_completion(port, body, timeout=120):
    """POST a streaming request; returns (text, list of chunk objects)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", body.pop("_path", "/v1/completions"), body=json.dumps(dict(body, stream=True)),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise AssertionError(f"status {r.status}: {r.read()!r}")
    chunks, text, done = [], "", False
    for raw in r:
        line = raw.decode().rstrip("\n")
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        c = json.loads(data)
        chunks.append(c)
        for ch in c.get("choices", []):
            text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
    conn.close()
    if not done:
        raise AssertionError("stream ended without [DONE]")
    return text, chunks


def metrics(port):
    status, _, body = http(port, "GET", "/metrics")
    assert status == 200, status
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run(test_class_names_module):
    """unittest.main that maps 'all tests skipped' to ctest's skip code."""
    result = unittest.main(module=test_class_names_module, exit=False, verbosity=2).result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun and len(result.skipped) == result.testsRun:
        sys.exit(SKIP)
    sys.exit(0)


def raw_socket(port, timeout=30):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def read_http_response(sock):
    """Reads a whole response with Content-Length from a raw socket: (status, body bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return None, b""
    status = int(head.split(b" ")[1])
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    if m:
        n = int(m.group(1))
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, body
