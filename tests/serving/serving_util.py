"""Shared helpers of the serving tests: a `starattn serve-local` on a tiny random model, raw HTTP
requests, server-sent-event parsing and /metrics scraping. Standard library only."""
import json
import os
import re
import signal
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
        # The log goes to a file: a pipe nobody reads fills up with access-log lines and stalls
        # the server.
        self.log_path = os.path.join(self.dir.name, "server.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.port = self.tcp_port = None
        deadline = time.time() + 60
        while self.port is None or (tcp and self.tcp_port is None):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("serve-local exited early: " + self.log())
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
        self.dir.cleanup()

    def log(self):
        return read_text(self.log_path)

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


class Cluster:
    """`starattn serve --http/--tcp` (the head) and `workers` `starattn worker` processes on
    loopback, on a fresh tiny random model. Logs go to files (a full pipe would stall a process);
    close() always ends every process, by SIGKILL when SIGTERM is not enough."""

    def __init__(self, workers=2, head_args=(), threads=2, worker_args=()):
        self.dir = tempfile.TemporaryDirectory(prefix="starattn-cluster-")
        self.model = self.path("model")
        self.threads = threads
        self.worker_args = list(worker_args)
        self.procs, self.workers, self.logs = [], [], []
        try:
            subprocess.run([cli(), "init-model", "--preset", "tiny", "--seed", "7", "--out", self.model],
                           check=True, stdout=subprocess.DEVNULL, timeout=60)
            port_file = self.path("head.port")
            self.head = self._spawn("head", [cli(), "serve", "--listen", "127.0.0.1:0", "--port-file", port_file,
                                             "--model", self.model, "--threads", str(threads),
                                             "--exchange-timeout", "20", "--http", "127.0.0.1:0",
                                             "--tcp", "127.0.0.1:0", "--model-name", "tiny"] + list(head_args),
                                    stdout=subprocess.PIPE)
            self.port, self.tcp_port = self._read_addresses(self.head, 60)
            self.base = f"http://127.0.0.1:{self.port}"
            wait_for(lambda: os.path.exists(port_file) and read_text(port_file).strip(), 30, "the head's port file")
            self.head_port = int(read_text(port_file))
            for i in range(workers):
                self.workers.append(self.start_worker(i))
            wait_for(lambda: len(self.kv_held()) == workers, 60, f"{workers} workers to register")
        except BaseException:
            sys.stderr.write(self.logs_text())
            self.close()
            raise

    def path(self, name):
        return os.path.join(self.dir.name, name)

    def start_worker(self, i):
        """Starts worker `w{i}` (its log appended to w{i}.log); a restart after a kill reuses the
        name, as an operator's restart would. Returns the process; the caller keeps it."""
        return self._spawn(f"w{i}", [cli(), "worker", "--head", f"127.0.0.1:{self.head_port}",
                                     "--model", self.model, "--cpu-threads", str(self.threads),
                                     "--name", f"w{i}"] + self.worker_args)

    def health(self):
        status, _, raw = http(self.port, "GET", "/health", timeout=10)
        assert status == 200, (status, raw)
        return json.loads(raw)

    def _spawn(self, tag, args, stdout=subprocess.DEVNULL):
        if (tag, self.path(tag + ".log")) not in self.logs:
            self.logs.append((tag, self.path(tag + ".log")))
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        with open(self.path(tag + ".log"), "a") as log:
            p = subprocess.Popen(args, stdout=stdout, stderr=log, env=env)
        self.procs.append(p)
        return p

    @staticmethod
    def _read_addresses(proc, timeout):
        """The http:// and tcp:// lines the head prints once listening (bounded wait)."""
        import select
        deadline, data, found = time.time() + timeout, b"", {}
        while len(found) < 2:
            left = deadline - time.time()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError("the head did not print its addresses: " + data.decode(errors="replace"))
            if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                data += chunk
                for m in re.finditer(rb"(http|tcp)://[^:\s]+:(\d+)", data):
                    found[m.group(1).decode()] = int(m.group(2))
        return found["http"], found["tcp"]

    def kv_held(self):
        """{worker: KV tokens the head has placed there}, from the head's /metrics."""
        try:
            m = metrics(self.port)
        except OSError:
            return {}
        return {k[len('starattn_kv_tokens_held{worker="'):-2]: v for k, v in m.items()
                if k.startswith("starattn_kv_tokens_held{")}

    def head_log(self):
        return read_text(self.path("head.log"))

    def logs_text(self):
        out = ""
        for tag, name in self.logs:
            out += f"---- {tag} ----\n" + read_text(name)[-4000:]
        return out

    def run_local(self, workers, *request):
        """`starattn run` in one process with the same settings; returns the token ids."""
        r = subprocess.run([cli(), "run", "--model", self.model, "--workers", str(workers),
                            "--threads", str(self.threads), "--output", "ids"] + list(request),
                           capture_output=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError("starattn run failed: " + r.stderr.decode(errors="replace"))
        return [int(t) for t in r.stdout.split()]

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        self.procs = []
        self.dir.cleanup()


def rss_kib(pid):
    """The resident set of process `pid` in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS (a zombie?)")


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def byte_text(ids):
    """The text the byte tokenizer's ids stand for, as the HTTP server renders it."""
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")
