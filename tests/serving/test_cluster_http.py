"""The HTTP and framed TCP servers in the head of a cluster (`starattn serve --http --tcp`) with
two `starattn worker` processes: answers equal `starattn run` in one process (greedy), a client
that hangs up cancels its request and frees the workers' KV, a context over the head's limit is a
400, /health and /metrics work, and a worker killed mid-stream gives the client an error event
while the next request succeeds."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

try:
    import openai
except ImportError:  # CI's venv has it (deploy/test.sh); elsewhere those tests are skipped
    openai = None

CONTEXT = "Star attention splits a long context into blocks; each host encodes its blocks. " * 4
QUERY = "Who encodes the blocks?"
MESSAGES = [
    {"role": "system", "content": "You answer questions about documents."},
    {"role": "user", "content": "Document: star attention encodes blocks of the context in parallel."},
    {"role": "assistant", "content": "Understood."},
    {"role": "user", "content": "What is encoded in parallel?"},
]


def write(dir_, name, text):
    path = os.path.join(dir_, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def open_stream(port, body):
    """Starts a streaming completion on a raw socket; returns (socket, file) once the headers
    and the first event are in."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps(dict(body, stream=True)).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    f = s.makefile("rb")
    status = f.readline()
    assert b" 200 " in status, status
    while f.readline().strip():  # headers
        pass
    return s, f


def read_events(f, until_done=True, count=None):
    """`data:` payloads of a chunked event stream until [DONE] (or `count` of them)."""
    events = []
    while True:
        line = f.readline()
        if not line:
            return events
        line = line.strip()
        if line.startswith(b"data: "):
            payload = line[6:].decode()
            events.append(payload)
            if payload == "[DONE]" or (count and len(events) >= count):
                return events


class ClusterHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = su.Cluster(workers=2, head_args=["--max-context-tokens", "2000"])
        cls.files = tempfile.TemporaryDirectory(prefix="starattn-cluster-req-")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()
        cls.files.cleanup()

    def tearDown(self):
        if any(p.poll() is not None for p in self.cluster.procs):
            self.fail("a cluster process died:\n" + self.cluster.logs_text())

    def test_processes_log_the_model_load_with_its_time(self):
        # Operators see what loads and how long it took (issue 14): the head and each worker.
        head = self.cluster.head_log()
        self.assertRegex(head, r"Z info  serve: loading ")
        self.assertRegex(head, r"Z info  serve: .* loaded in \d+\.\d\d s")
        workers = 0
        for tag, name in self.cluster.logs:
            if tag.startswith("w"):
                with open(name, errors="replace") as f:
                    self.assertRegex(f.read(), r" loaded in \d+\.\d\d s", tag)
                workers += 1
        self.assertEqual(workers, 2, [t for t, _ in self.cluster.logs])

    @unittest.skipIf(openai is None, "the openai package is not installed")
    def test_openai_streams_equal_the_in_process_run(self):
        c = self.cluster
        client = openai.OpenAI(base_url=c.base + "/v1", api_key="unused", max_retries=0)
        # A completion: the head lays out context and query as `run --context-file --query` does.
        stream = client.completions.create(
            model="tiny", prompt=CONTEXT, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"query": QUERY, "ignore_eos": True})
        text, usage = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage
        ctx = write(self.files.name, "context.txt", CONTEXT)
        ids = c.run_local(2, "--context-file", ctx, "--query", QUERY, "--max-tokens", "16", "--ignore-eos")
        self.assertEqual(len(ids), 16)
        self.assertEqual(text, su.byte_text(ids))
        self.assertEqual(usage.completion_tokens, 16)
        whole = client.completions.create(model="tiny", prompt=CONTEXT, max_tokens=16, temperature=0,
                                          extra_body={"query": QUERY, "ignore_eos": True})
        self.assertEqual(whole.choices[0].text, text)
        self.assertEqual(whole.choices[0].finish_reason, "length")

        # A chat: split with the chat template as `run --messages-file` does.
        stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12,
                                                temperature=0, stream=True, extra_body={"ignore_eos": True})
        chat, finish = "", None
        for chunk in stream:
            choice = chunk.choices[0]
            chat += choice.delta.content or ""
            finish = choice.finish_reason or finish
        self.assertEqual(finish, "length")
        msgs = write(self.files.name, "chat.json", json.dumps(MESSAGES))
        ids = c.run_local(2, "--messages-file", msgs, "--max-tokens", "12", "--ignore-eos")
        self.assertEqual(len(ids), 12)
        self.assertEqual(chat, su.byte_text(ids))

    def test_framed_tcp_gives_the_same_ids_as_run(self):
        c = self.cluster
        ctx = write(self.files.name, "tcp_context.txt", CONTEXT[:200])
        r = subprocess.run(
            [su.cli(), "client", "--connect", f"127.0.0.1:{c.tcp_port}", "--context-file", ctx,
             "--query", QUERY, "--max-tokens", "9", "--ignore-eos", "--output", "ids"],
            capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        local = c.run_local(2, "--context-file", ctx, "--query", QUERY, "--max-tokens", "9", "--ignore-eos")
        self.assertEqual([int(t) for t in r.stdout.split()], local)

    def test_stop_strings_end_the_text_before_the_match(self):
        body = {"prompt": CONTEXT, "query": QUERY, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
        status, _, raw = su.http(self.cluster.port, "POST", "/v1/completions", body)
        self.assertEqual(status, 200, raw)
        full = json.loads(raw)["choices"][0]["text"]
        # A printable ASCII character: random bytes decode to U+FFFD in JSON, which is not in
        # the generated bytes the stop strings are matched against.
        stop = next((ch for ch in full[3:] if " " < ch < "\x7f"), None)
        if stop is None:
            self.skipTest("the random model generated no printable ASCII here")
        status, _, raw = su.http(self.cluster.port, "POST", "/v1/completions", dict(body, stop=[stop]))
        self.assertEqual(status, 200, raw)
        choice = json.loads(raw)["choices"][0]
        self.assertEqual(choice["text"], full[:full.index(stop)])
        self.assertEqual(choice["finish_reason"], "stop")
        su.wait_for(lambda: sum(self.cluster.kv_held().values()) == 0, 20, "the stopped request's KV to go")

    def test_a_hangup_cancels_and_frees_the_workers_kv(self):
        c = self.cluster
        # Long enough (seconds) that it is still decoding whatever the machine's speed, and
        # within the tiny model's 4096 positions.
        s, f = open_stream(c.port, {"prompt": CONTEXT * 2, "query": QUERY, "max_tokens": 3000,
                                    "temperature": 0, "ignore_eos": True})
        read_events(f, count=3)  # it is decoding now
        held = c.kv_held()
        self.assertEqual(len(held), 2, held)
        self.assertGreater(sum(held.values()), len(CONTEXT) * 2 * 0.9, held)
        self.assertTrue(all(v > 0 for v in held.values()), held)
        f.close()
        s.close()
        su.wait_for(lambda: sum(c.kv_held().values()) == 0, 20, "the workers' KV to be freed")
        su.wait_for(lambda: su.metrics(c.port)["starattn_active_streams"] == 0, 20, "the stream to end")
        self.assertIn("cancelled", c.head_log())
        m = su.metrics(c.port)
        self.assertGreaterEqual(m['starattn_requests_total{endpoint="/v1/completions",status="499"}'], 1)

    def test_a_context_over_the_limit_is_a_400(self):
        status, _, raw = su.http(self.cluster.port, "POST", "/v1/completions",
                                 {"prompt": "z" * 3000, "query": QUERY, "max_tokens": 2})
        self.assertEqual(status, 400, raw)
        err = json.loads(raw)["error"]
        self.assertEqual(err["code"], "context_length_exceeded")
        self.assertIn("2000", err["message"])
        # An anchor longer than the block: the scheduler refuses it as the client's fault.
        status, _, raw = su.http(self.cluster.port, "POST", "/v1/completions",
                                 {"prompt": CONTEXT, "query": QUERY, "block_size": 10, "anchor_size": 20})
        self.assertEqual(status, 400, raw)
        self.assertEqual(json.loads(raw)["error"]["type"], "invalid_request_error")

    def test_health_and_metrics(self):
        status, _, raw = su.http(self.cluster.port, "GET", "/health")
        self.assertEqual(status, 200)
        health = json.loads(raw)
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["queued"], 0)
        m = su.metrics(self.cluster.port)
        self.assertEqual(sorted(self.cluster.kv_held()), ["w0/cpu", "w1/cpu"])
        self.assertEqual(m["starattn_queued_requests"], 0)
        self.assertIn('starattn_active_requests{worker="w0/cpu"}', m)


class ClusterWorkerLossTest(unittest.TestCase):
    """Its own cluster: the test kills one of the workers."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = su.Cluster(workers=2)

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()

    def test_a_killed_worker_gives_an_error_event_and_the_next_request_succeeds(self):
        c = self.cluster
        s, f = open_stream(c.port, {"prompt": CONTEXT, "query": QUERY, "max_tokens": 3000,
                                    "temperature": 0, "ignore_eos": True})
        try:
            read_events(f, count=3)
            t0 = time.time()
            c.workers[1].send_signal(signal.SIGKILL)
            c.workers[1].wait(timeout=10)
            s.settimeout(30)
            events = read_events(f)
        finally:
            f.close()
            s.close()
        self.assertEqual(events[-1], "[DONE]", events[-3:])
        err = json.loads(events[-2])["error"]
        self.assertIn("w1", err["message"])
        self.assertEqual(err["type"], "server_error")
        self.assertLess(time.time() - t0, 25)
        if c.head.poll() is not None:
            self.fail("the head died:\n" + c.logs_text())
        # The head forgets the dead worker; the next request runs on the one left and equals a
        # one-worker run in one process.
        su.wait_for(lambda: list(c.kv_held()) == ["w0/cpu"], 20, "the dead worker to leave /metrics")
        status, _, raw = su.http(c.port, "POST", "/v1/completions",
                                 {"prompt": CONTEXT, "query": QUERY, "max_tokens": 10, "temperature": 0,
                                  "ignore_eos": True})
        self.assertEqual(status, 200, raw)
        with tempfile.TemporaryDirectory() as d:
            ids = c.run_local(1, "--context-file", write(d, "c.txt", CONTEXT), "--query", QUERY,
                              "--max-tokens", "10", "--ignore-eos")
        self.assertEqual(json.loads(raw)["choices"][0]["text"], su.byte_text(ids))
        self.assertEqual(c.kv_held(), {"w0/cpu": 0})


if __name__ == "__main__":
    su.run(sys.modules[__name__])
