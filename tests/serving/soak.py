#!/usr/bin/env python3
"""A bounded soak with faults: a head (`starattn serve --http --tcp`) and three `starattn worker`
processes on a tiny random model (cpu backend), clients over HTTP (OpenAI API: completions and
chat, whole and streamed) and framed TCP (`starattn client`), at most --concurrency at once,
while a fault schedule stops (SIGSTOP), resumes (SIGCONT), kills (SIGKILL) and restarts workers
every --fault-every requests.

It passes when
  - no request outlives --bound seconds (no hangs),
  - every request ends with exactly its max_tokens tokens (ignore_eos) or a clear error: a known
    kind (worker_failed, timeout, overloaded) whose message, for worker_failed, names a worker
    the schedule faulted; anything else (a 500, a reset connection, a client timeout, a stream
    that ends without [DONE]) fails the soak,
  - the KV the head has placed returns to 0 on every worker and nothing stays queued or active,
  - each process that lived through the soak (the head, w0, w1) has an RSS afterwards within
    --rss-tolerance of its RSS after the warm-up (both measured idle); the head may keep
    --head-kib-per-kill more per worker killed (UCX keeps ~280 KiB of a killed peer's System V
    shared-memory segment mapped, plus ~300 KiB of heap, after its endpoint is force-closed: an
    open issue in docs/RELIABILITY.md, bounded by kills, not by requests); a worker may keep
    --worker-cache-kib more, its cache of encoded blocks (bounded, filled by new prompts).
w0 is never faulted; w1 is only stopped and resumed; w2 is killed (also while stopped),
restarted and stopped, so the RSS check covers the processes that saw faults but kept running.

CI (ctest serving_soak) runs the defaults; by hand, bigger numbers:
  STARATTN_CLI=build/tools/starattn python3 tests/serving/soak.py --requests 20000 --concurrency 64
Prints the figures as Markdown (docs/RELIABILITY.md has a run's); --report F also writes JSON.
Standard library only.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

# (action, worker, seconds since the previous fault before acting). The holds make some stops
# outlast the head's 5 s heartbeat timeout (marked unhealthy, then readmitted) while others are
# short enough to pass unnoticed.
FAULT_CYCLE = [
    ("stop", 1, 0), ("cont", 1, 0),
    ("kill", 2, 0), ("restart", 2, 0),
    ("stop", 2, 0), ("cont", 2, 6.5),
    ("stop", 2, 0), ("kill", 2, 0), ("restart", 2, 0),
    ("stop", 1, 0), ("cont", 1, 6.5),
]
FAULTED = {"w1", "w2"}
WORDS = ("star attention splits the context into blocks each host encodes its own block with an "
         "anchor then the query attends to every block and the partial results merge").split()
CLEAR_KINDS = {"worker_failed", "timeout", "overloaded"}


class Outcome:
    def __init__(self, index, transport):
        self.index, self.transport = index, transport
        self.ok, self.kind, self.message, self.seconds = False, None, "", 0.0


def make_request(rng, index):
    """A short random request: context 64-600 bytes, query, 2-12 tokens, greedy or sampled."""
    n = rng.randint(64, 600)
    words = []
    while sum(len(w) + 1 for w in words) < n:
        words.append(rng.choice(WORDS))
    return {
        "context": " ".join(words)[:n],
        "query": "What does request %d ask about %s?" % (index, rng.choice(WORDS)),
        "max_tokens": rng.randint(2, 12),
        "temperature": rng.choice([0.0, 0.8]),
        "seed": rng.randint(1, 1 << 30),
        "transport": rng.choice(["http", "http_stream", "chat_stream", "tcp"]),
    }


def classify_message(kind, message, out):
    out.kind, out.message = kind or "unclear", message
    if out.kind not in CLEAR_KINDS or not message:
        out.kind = "unclear"
    elif out.kind == "worker_failed" and not any(("context worker %s/" % w) in message for w in FAULTED):
        out.kind = "unclear"  # a worker error must name one the schedule faulted


def http_request(port, req, bound, out):
    body = {"max_tokens": req["max_tokens"], "temperature": req["temperature"], "seed": req["seed"],
            "ignore_eos": True}
    if req["transport"] == "chat_stream":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": req["context"] + "\n" + req["query"]}]
    else:
        path = "/v1/completions"
        body["prompt"], body["query"] = req["context"], req["query"]
    stream = req["transport"] != "http"
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=bound)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            err = json.loads(r.read()).get("error", {})
            return classify_message(err.get("code"), err.get("message", ""), out)
        if not stream:
            usage = json.loads(r.read())["usage"]
            out.ok = usage["completion_tokens"] == req["max_tokens"]
            if not out.ok:
                out.kind, out.message = "wrong_tokens", json.dumps(usage)
            return
        tokens, done = None, False
        for raw in r:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                err = event["error"]
                return classify_message(err.get("code"), err.get("message", ""), out)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
        out.ok = done and tokens == req["max_tokens"]
        if not out.ok:
            out.kind, out.message = "wrong_tokens", "done=%s tokens=%s" % (done, tokens)
    finally:
        conn.close()


def tcp_request(tcp_port, req, bound, out):
    r = subprocess.run([su.cli(), "client", "--connect", "127.0.0.1:%d" % tcp_port,
                        "--context", req["context"], "--query", req["query"],
                        "--max-tokens", str(req["max_tokens"]), "--temperature", str(req["temperature"]),
                        "--seed", str(req["seed"]), "--ignore-eos", "--output", "ids"],
                       capture_output=True, timeout=bound)
    if r.returncode == 0:
        n = len(r.stdout.split())
        out.ok = n == req["max_tokens"]
        if not out.ok:
            out.kind, out.message = "wrong_tokens", "%d ids" % n
        return
    err = r.stderr.decode(errors="replace").strip().splitlines()
    last = err[-1] if err else ""
    # The client's last log line: "<UTC time> error starattn client: CODE: message".
    m = re.search(r" error starattn client: ([a-z_]+): (.*)$", last)
    if m:
        return classify_message(m.group(1), m.group(2), out)
    out.kind, out.message = "unclear", last


def run_one(cluster, req, index, bound):
    out = Outcome(index, req["transport"])
    t0 = time.monotonic()
    try:
        if req["transport"] == "tcp":
            tcp_request(cluster.tcp_port, req, bound, out)
        else:
            http_request(cluster.port, req, bound, out)
    except (OSError, subprocess.TimeoutExpired, http.client.HTTPException, ValueError) as e:
        out.ok, out.kind, out.message = False, "unclear", "%s: %s" % (type(e).__name__, e)
    out.seconds = time.monotonic() - t0
    return out


def run_load(cluster, count, concurrency, seed, bound, progress=None):
    """`count` requests from `concurrency` threads; returns the outcomes in request order."""
    rng = random.Random(seed)
    requests = [make_request(rng, i) for i in range(count)]
    outcomes = [None] * count
    lock = threading.Lock()
    state = {"next": 0}

    def client():
        while True:
            with lock:
                i = state["next"]
                if i >= count:
                    return
                state["next"] += 1
            outcomes[i] = run_one(cluster, requests[i], i, bound)
            if progress:
                progress()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


class FaultSchedule:
    """Every `every` finished requests, the next step of FAULT_CYCLE (waiting out its hold first)."""

    def __init__(self, cluster, every):
        self.cluster, self.every = cluster, every
        self.finished, self.step, self.log = 0, 0, []
        self.cond = threading.Condition()
        self.stopping = False
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self.run)

    def request_finished(self):
        with self.cond:
            self.finished += 1
            self.cond.notify()

    def run(self):
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.stopping or self.finished >= (self.step + 1) * self.every)
                if self.stopping:
                    return
            action, w, hold = FAULT_CYCLE[self.step % len(FAULT_CYCLE)]
            wait = self.last + hold - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.apply(action, w)
            self.log.append((round(time.monotonic() - self.t0, 2), self.finished, action, "w%d" % w))
            self.last = time.monotonic()
            self.step += 1

    def apply(self, action, w):
        c = self.cluster
        proc = c.workers[w]
        if action == "stop":
            proc.send_signal(signal.SIGSTOP)
        elif action == "cont":
            proc.send_signal(signal.SIGCONT)
        elif action == "kill":
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        elif action == "restart":
            c.workers[w] = c.start_worker(w)

    def start(self):
        self.t0 = time.monotonic()
        self.thread.start()

    def finish(self):
        """Stops the schedule and brings every worker back: resumed, or restarted if killed."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()
        for i, p in enumerate(self.cluster.workers):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
            else:
                self.cluster.workers[i] = self.cluster.start_worker(i)
                self.log.append((round(time.monotonic() - self.t0, 2), self.finished, "restart", "w%d" % i))


def wait_idle(cluster, workers, timeout):
    """All workers registered and healthy, no KV placed, nothing active or queued."""
    names = sorted("w%d/cpu" % i for i in range(workers))

    def idle():
        held = cluster.kv_held()
        if sorted(held) != names or sum(held.values()) != 0:
            return False
        m = su.metrics(cluster.port)
        return (m.get("starattn_active_streams", 0) == 0 and m.get("starattn_queued_requests", 0) == 0
                and cluster.health()["status"] == "ok")

    su.wait_for(idle, timeout, "the cluster to be idle (KV 0, %d healthy workers)" % workers)


def rss_of(cluster):
    procs = {"head": cluster.head}
    procs.update({"w%d" % i: p for i, p in enumerate(cluster.workers)})
    return {name: (p.pid, su.rss_kib(p.pid)) for name, p in procs.items()}


def measure_idle_rss(cluster, workers):
    wait_idle(cluster, workers, 60)
    time.sleep(1.0)  # let in-flight frees and trims finish
    return rss_of(cluster)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=96, help="requests before the RSS baseline")
    ap.add_argument("--fault-every", type=int, default=40, help="requests between faults")
    ap.add_argument("--bound", type=float, default=30.0, help="seconds any request may take")
    ap.add_argument("--rss-tolerance", type=float, default=0.05)
    ap.add_argument("--head-kib-per-kill", type=int, default=768,
                    help="RSS the head may keep per worker killed (measured ~600 KiB: UCX keeps a "
                         "killed peer's shared-memory segment and some endpoint state; open issue)")
    ap.add_argument("--worker-cache-kib", type=int, default=2048,
                    help="each worker's cache of encoded blocks (--context-cache-bytes); it fills "
                         "after the warm-up as new prompts arrive, so a lived worker may keep this "
                         "much more RSS. The default (half the KV room) would hold every prompt of "
                         "the soak and hide a leak behind the cache")
    ap.add_argument("--threads", type=int, default=1, help="cpu threads of each process")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--report", help="also write the figures here as JSON")
    a = ap.parse_args()
    workers = 3

    t_start = time.monotonic()
    cluster = su.Cluster(workers=workers, threads=a.threads,
                         worker_args=["--context-cache-bytes", str(a.worker_cache_kib * 1024)])
    failures = []
    try:
        warm = run_load(cluster, a.warmup, a.concurrency, a.seed + 1, a.bound)
        bad = [o for o in warm if not o.ok]
        if bad:
            raise AssertionError("the warm-up (no faults) had failures: %s" %
                                 [(o.transport, o.kind, o.message[:200]) for o in bad[:5]])
        rss_warm = measure_idle_rss(cluster, workers)

        faults = FaultSchedule(cluster, a.fault_every)
        faults.start()
        t0 = time.monotonic()
        outcomes = run_load(cluster, a.requests, a.concurrency, a.seed, a.bound, faults.request_finished)
        soak_seconds = time.monotonic() - t0
        faults.finish()
        rss_after = measure_idle_rss(cluster, workers)
        kv_after = cluster.kv_held()

        # ---- the figures
        by_kind, by_transport = {}, {}
        for o in outcomes:
            key = "ok" if o.ok else o.kind
            by_kind[key] = by_kind.get(key, 0) + 1
            t = by_transport.setdefault(o.transport, {"ok": 0, "error": 0})
            t["ok" if o.ok else "error"] += 1
        errors = [o for o in outcomes if not o.ok]
        slowest = max(o.seconds for o in outcomes)
        slowest_error = max((o.seconds for o in errors), default=0.0)
        fault_counts = {}
        for _, _, action, _ in faults.log:
            fault_counts[action] = fault_counts.get(action, 0) + 1
        kills = fault_counts.get("kill", 0)
        rss_rows = []
        for name, (pid, after) in rss_after.items():
            base_pid, base = rss_warm[name]
            lived = base_pid == pid
            change = (after - base) / base if lived else None
            rss_rows.append((name, base if lived else None, after, change))
            allowance = a.head_kib_per_kill * kills if name == "head" else a.worker_cache_kib
            if lived and abs(after - base - allowance / 2) > a.rss_tolerance * base + allowance / 2:
                failures.append("%s: RSS %d KiB after the soak vs %d KiB after the warm-up (%+.1f%%, "
                                "limit %.0f%% + %d KiB)"
                                % (name, after, base, 100 * change, 100 * a.rss_tolerance, allowance))
        for name in ("head", "w0", "w1"):
            if rss_warm[name][0] != rss_after[name][0]:
                failures.append("%s is not the process of the warm-up (it should never be killed)" % name)

        unclear = [o for o in errors if o.kind in ("unclear", "wrong_tokens")]
        for o in unclear[:10]:
            failures.append("request %d (%s) ended without its tokens or a clear error after %.1f s: "
                            "%s: %s" % (o.index, o.transport, o.seconds, o.kind, o.message[:300]))
        if len(unclear) > 10:
            failures.append("... and %d more such requests" % (len(unclear) - 10))
        if slowest > a.bound:
            failures.append("a request took %.1f s, over the %.0f s bound" % (slowest, a.bound))
        if sum(kv_after.values()) != 0:
            failures.append("KV still placed after the soak: %s" % kv_after)
        if len(errors) > len(outcomes) // 2:
            failures.append("%d of %d requests failed: the faults should cost a minority" %
                            (len(errors), len(outcomes)))
        if fault_counts.get("kill", 0) == 0 or fault_counts.get("stop", 0) == 0:
            failures.append("the schedule injected no kill or no stop: %s" % fault_counts)

        # ---- the report
        lines = [
            "soak: %d requests (%s), at most %d at once, %.1f s; warm-up %d requests; total %.1f s"
            % (len(outcomes), ", ".join("%s %d" % (k, sum(v.values())) for k, v in sorted(by_transport.items())),
               a.concurrency, soak_seconds, a.warmup, time.monotonic() - t_start),
            "",
            "| faults injected | count |", "|---|---|"]
        lines += ["| %s | %d |" % (k, v) for k, v in sorted(fault_counts.items())]
        lines += ["", "| outcome | requests |", "|---|---|"]
        lines += ["| %s | %d |" % (k, v) for k, v in sorted(by_kind.items())]
        lines += ["", "RSS allowance: %.0f%%, plus %d KiB x %d killed workers for the head and "
                  "%d KiB of block cache for a worker" %
                  (100 * a.rss_tolerance, a.head_kib_per_kill, kills, a.worker_cache_kib)]
        lines += ["", "longest request: %.2f s; longest time to an error: %.2f s (bound %.0f s)"
                  % (slowest, slowest_error, a.bound),
                  "KV placed after the soak: %s" % kv_after, "",
                  "| process | RSS after warm-up (KiB) | RSS after the soak (KiB) | change |",
                  "|---|---|---|---|"]
        for name, base, after, change in rss_rows:
            lines.append("| %s | %s | %d | %s |" % (name, base if base is not None else "(restarted)", after,
                                                     "%+.1f%%" % (100 * change) if change is not None else "-"))
        print("\n".join(lines), flush=True)
        if a.report:
            with open(a.report, "w") as f:
                json.dump({"requests": len(outcomes), "by_transport": by_transport, "outcomes": by_kind,
                           "faults": fault_counts, "fault_log": faults.log, "longest_request_s": slowest,
                           "longest_error_s": slowest_error, "kv_after": kv_after,
                           "rss_kib": {n: {"warm": b, "after": af} for n, b, af, _ in rss_rows},
                           "soak_seconds": soak_seconds,
                           "error_samples": [(o.transport, o.kind, o.message[:200]) for o in errors[:20]]},
                          f, indent=1)
    except BaseException:
        sys.stderr.write(cluster.logs_text())
        raise
    finally:
        cluster.close()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), flush=True)
        return 1
    print("\npassed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
