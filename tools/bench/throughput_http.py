#!/usr/bin/env python3
"""Decode throughput over HTTP (issue 15 point 4): N concurrent streams, aggregate tokens/s and
inter-token latency, per stream count, against the 1-stream row.

For each count in --streams it starts exactly that many streaming completions at once (token-id
prompts: --context random context ids, a --query-tokens question, --max-tokens new tokens,
ignore_eos, greedy) and records, client side, the arrival time and token count of every chunk.
  steady window   from the moment the last stream got its first token to the moment the first
                  stream got its last one: every stream is decoding in it (no prefill of this
                  level runs); when it is empty the level reports "no steady window".
  tokens/s        tokens arriving inside the window / its length, all streams together.
  ITL p50 / p99   gaps between consecutive chunks of one stream, both inside the window, per
                  token (a chunk of k tokens counts as k gaps of gap/k); "p99 all" takes every
                  gap after the first token, prefill stalls of other streams included.
  TTFT p50        request sent -> first token.
Chunks carry one token each only with logprobs on (the default, --token-chunks logprobs): the
server then sends a chunk per token even when its text is empty (random weights over a large
vocabulary mostly produce ids that the byte tokenizer prints as nothing). Logprobs copy each
request's logits row to the host every step: cheap for a small vocabulary (259 ids of the byte
vocabulary: 1 KiB), not for 128K ids; --token-chunks text counts text chunks instead (one per
token only where every token prints as a whole character).

Context per stream: --context, reduced per stream count where the KV of all streams would not
fit --kv-budget-bytes (auto: the GPU's free memory once the server has loaded, by nvidia-smi);
the table says what ran. Each stream gets its own random context (no context-cache hits) unless
--shared-context (one document for all: phase 1 once; the requests after the first attend over
its K/V while it runs, their context attention stacked into one pass over it per few streams, so
the K/V is held and read once, not once per stream; give the server a context cache, which the
sharing goes through: --context-cache-bytes).

Server: --url attaches to a running one; otherwise it starts `serve-local` (--server local) or
a head plus one worker (--server cluster: the query actor batches the decode steps of all
running requests) with random weights of --config (a config.json) or an --preset model.
  python3 tools/bench/throughput_http.py --cli build/tools/starattn --config tools/bench/byte_d64_config.json \\
      --server cluster --streams 1,4,16 --context 512 --max-tokens 32 --json /tmp/t.json
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
import tempfile
import threading
import time
import urllib.parse
import urllib.request

GOAL_TOKENS_X = 10.0  # at 16 streams, vs 1
GOAL_ITL_X = 1.5      # p50 inter-token latency at 16 streams, vs 1


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Stream:
    """One streaming completion: the send time, (arrival, tokens) per chunk, the usage."""

    def __init__(self):
        self.sent = None
        self.chunks = []
        self.completion_tokens = None
        self.error = None


def run_stream(host, port, body, token_chunks, start, out):
    start.wait()
    conn = http.client.HTTPConnection(host, port, timeout=1800)
    out.sent = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            out.error = f"status {r.status}: {r.read()[:300]!r}"
            return
        for raw in r:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            now = time.perf_counter()
            if "error" in c:
                out.error = json.dumps(c["error"])[:300]
                return
            if c.get("usage"):
                out.completion_tokens = c["usage"]["completion_tokens"]
            if not c.get("choices"):
                continue
            ch = c["choices"][0]
            if token_chunks == "logprobs":
                n = len((ch.get("logprobs") or {}).get("tokens") or [])
            else:
                n = 1 if ch.get("text") else 0
            if n:
                out.chunks.append((now, n))
    except Exception as e:  # noqa: BLE001 - a benchmark reports failures, it does not stop
        out.error = repr(e)
    finally:
        conn.close()


def request_body(args, rng, context_ids):
    lo, hi = args.id_range
    query = [rng.randrange(lo, hi) for _ in range(args.query_tokens)]
    body = {"prompt": context_ids, "query": query, "max_tokens": args.max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if args.token_chunks == "logprobs":
        body["logprobs"] = 0
    return json.dumps(body)


def run_level(host, port, args, n, context, rng, max_tokens=None):
    lo, hi = args.id_range
    shared = [rng.randrange(lo, hi) for _ in range(context)] if args.shared_context else None
    saved = args.max_tokens
    if max_tokens is not None:
        args.max_tokens = max_tokens
    bodies = [request_body(args, rng, shared or [rng.randrange(lo, hi) for _ in range(context)]) for _ in range(n)]
    args.max_tokens = saved
    streams = [Stream() for _ in range(n)]
    start = threading.Event()
    threads = [threading.Thread(target=run_stream, args=(host, port, b, args.token_chunks, start, s))
               for b, s in zip(bodies, streams)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    return streams, time.perf_counter() - t0


def summarize(n, context, streams, wall):
    errors = [s.error for s in streams if s.error]
    ok = [s for s in streams if not s.error and s.chunks]
    row = {"streams": n, "context": context, "errors": len(errors), "first_errors": errors[:3], "wall_s": wall,
           "completion_tokens": sum(s.completion_tokens or 0 for s in ok),
           "chunk_tokens": sum(k for s in ok for _, k in s.chunks)}
    if len(ok) < n:
        row["note"] = f"only {len(ok)} of {n} streams produced tokens"
        if not ok:
            return row
    row["ttft_p50_ms"] = percentile([(s.chunks[0][0] - s.sent) * 1e3 for s in ok], 50)
    w0 = max(s.chunks[0][0] for s in ok)
    w1 = min(s.chunks[-1][0] for s in ok)
    steady, every = [], []
    tokens_in = 0
    for s in ok:
        for (ta, _), (tb, k) in zip(s.chunks, s.chunks[1:]):
            every.extend([(tb - ta) / k] * k)
            if ta >= w0 and tb <= w1:
                steady.extend([(tb - ta) / k] * k)
        tokens_in += sum(k for t, k in s.chunks if w0 < t <= w1)
    row["itl_all_p99_ms"] = (percentile(every, 99) or 0) * 1e3 if every else None
    if w1 > w0 and steady:
        row["window_s"] = w1 - w0
        row["tokens_per_s"] = tokens_in / (w1 - w0)
        row["itl_p50_ms"] = percentile(steady, 50) * 1e3
        row["itl_p99_ms"] = percentile(steady, 99) * 1e3
        row["itl_gaps"] = len(steady)
    else:
        # Prefill of later streams overlapped the whole decode of earlier ones: report the
        # whole run, and say so.
        first = min(s.chunks[0][0] for s in ok)
        last = max(s.chunks[-1][0] for s in ok)
        row["note"] = (row.get("note", "") + "; " if row.get("note") else "") + \
            "no steady window (raise --max-tokens): whole-run figures"
        row["tokens_per_s"] = row["chunk_tokens"] / (last - first) if last > first else None
        row["itl_p50_ms"] = percentile(every, 50) * 1e3 if every else None
        row["itl_p99_ms"] = row["itl_all_p99_ms"]
        row["itl_gaps"] = len(every)
    if row["chunk_tokens"] != row["completion_tokens"]:
        row["note"] = (row.get("note", "") + "; " if row.get("note") else "") + \
            f"chunks carried {row['chunk_tokens']} of {row['completion_tokens']} tokens"
    return row


def add_ratios(rows):
    base = next((r for r in rows if r["streams"] == 1 and r.get("tokens_per_s")), None)
    for r in rows:
        if base and r.get("tokens_per_s") and r.get("itl_p50_ms"):
            r["tokens_x"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["itl_p50_x"] = r["itl_p50_ms"] / base["itl_p50_ms"]
    r16 = next((r for r in rows if r["streams"] == 16 and "tokens_x" in r), None)
    if not r16:
        return {"checked": False, "why": "needs a 1-stream and a 16-stream row"}
    return {"checked": True, "tokens_x_16": r16["tokens_x"], "itl_p50_x_16": r16["itl_p50_x"],
            "tokens_met": r16["tokens_x"] >= GOAL_TOKENS_X, "itl_met": r16["itl_p50_x"] <= GOAL_ITL_X}


def markdown(rows, goals, title):
    f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    out = [f"**{title}**", "",
           "| streams | context/stream | tokens/s | x 1-stream | ITL p50 ms | x 1-stream | ITL p99 ms | "
           "ITL p99 all ms | TTFT p50 ms | errors | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['streams']} | {r['context']} | {f(r.get('tokens_per_s'))} | {f(r.get('tokens_x'), 2)} | "
                   f"{f(r.get('itl_p50_ms'), 2)} | {f(r.get('itl_p50_x'), 2)} | {f(r.get('itl_p99_ms'), 2)} | "
                   f"{f(r.get('itl_all_p99_ms'), 2)} | {f(r.get('ttft_p50_ms'))} | {r['errors']} | "
                   f"{r.get('note', '')} |")
    out.append("")
    if goals["checked"]:
        out.append(f"Goal at 16 streams: tokens/s >= {GOAL_TOKENS_X:g}x the 1-stream row: "
                   f"{goals['tokens_x_16']:.2f}x, **{'met' if goals['tokens_met'] else 'not met'}**; "
                   f"p50 ITL <= {GOAL_ITL_X:g}x: {goals['itl_p50_x_16']:.2f}x, "
                   f"**{'met' if goals['itl_met'] else 'not met'}**.")
    else:
        out.append(f"Goals not checked: {goals['why']}.")
    return "\n".join(out)


# ---- the server ----

def model_kv_bytes_per_token(cfg, dtype_bytes):
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * dtype_bytes


def gpu_free_bytes():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return int(out.split()[0]) << 20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def fitting_context(args, n, per_token, budget):
    """The largest context (a multiple of --context-step) whose KV, for n streams, fits the budget
    with the encoding scratch of one more context beside them (the last stream's phase 1 holds
    scratch rows for its block while the others' K/V is in place: without that room the server
    refuses it for now and runs it only after a stream ends, and the level never runs n at once)."""
    if not budget:
        return args.context
    tokens = int(budget * args.kv_fraction) // per_token
    # --shared-context: the streams after the first share its K/V (ContextShard::shares_kv); the
    # context cache keeps a copy of its blocks besides.
    copies = 2 if args.shared_context else n
    room = (tokens - n * (args.query_tokens + args.max_tokens)) // (copies + 1)
    return max(0, min(args.context, room // args.context_step * args.context_step))


def wait_for(url, pred, seconds, procs):
    deadline = time.time() + seconds
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"a server process exited with {p.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if pred(r.read().decode()):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"the server was not ready at {url} within {seconds} s")


def start_server(args, tmp, log):
    """Starts serve-local or a head + worker; returns (host, port, processes)."""
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    if args.config:
        model_local = [args.config, "--random-weights"]
        model_cluster = ["--random-weights", args.config]
    else:
        model = os.path.join(tmp, "model")
        subprocess.run([args.cli, "init-model", "--preset", args.preset, "--seed", "1", "--out", model],
                       check=True, stdout=subprocess.DEVNULL)
        model_local = [model]
        model_cluster = ["--model", model]
    dev = ["--device", args.device]
    cache = ["--context-cache-bytes", str(args.context_cache_bytes)]
    if args.phase1_chunk is not None:
        cache += ["--phase1-chunk", str(args.phase1_chunk)]
    procs = []
    if args.server == "local":
        cmd = [args.cli, "serve-local", "--model", *model_local, "--http", "127.0.0.1:0", *dev, *cache,
               "--max-queue", "1024"]
    else:
        cmd = [args.cli, "serve", "--listen", "127.0.0.1:0", "--port-file", os.path.join(tmp, "port"),
               "--http", "127.0.0.1:0", *model_cluster, *dev, "--max-queue", "1024", "--quiet"]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env))
    line = procs[0].stdout.readline().strip()
    m = re.search(r"http://([^:/]+):(\d+)", line)
    if not m:
        procs[0].kill()
        sys.exit(f"the server did not print its HTTP address (got {line!r})")
    host, port = m.group(1), int(m.group(2))
    if args.server == "cluster":
        port_file = os.path.join(tmp, "port")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()) and time.time() < deadline:
            time.sleep(0.2)
        head = f"127.0.0.1:{open(port_file).read().split()[0]}"
        where = ["--gpus", "0"] if args.device == "cuda" else []
        procs.append(subprocess.Popen([args.cli, "worker", "--head", head, *model_cluster, *where, *cache,
                                       "--connect-timeout", str(args.start_timeout)],
                                      stdout=log, stderr=log, env=env))
        # A worker is registered once /metrics lists it.
        wait_for(f"http://{host}:{port}/metrics", lambda t: "starattn_kv_tokens_held{" in t, args.start_timeout, procs)
    else:
        wait_for(f"http://{host}:{port}/health", lambda t: '"ok"' in t, args.start_timeout, procs)
    return host, port, procs


def stop_server(procs):
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server; default: start one")
    ap.add_argument("--server", choices=("local", "cluster"), default="cluster",
                    help="what to start: serve-local, or serve + one worker (default)")
    ap.add_argument("--cli", default="build/tools/starattn", help="the starattn binary (to start a server)")
    ap.add_argument("--config", help="config.json: the started server runs random weights of its shape; "
                    "also gives the vocabulary and KV bytes per token")
    ap.add_argument("--preset", default="tiny", help="random model preset when there is no --config")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--context-cache-bytes", type=int, default=0,
                    help="the started server's context cache (default 0: off, every context is new)")
    ap.add_argument("--start-timeout", type=int, default=300, help="seconds for the server to load")
    ap.add_argument("--server-log", help="append the started server's stderr here")
    ap.add_argument("--streams", default="1,4,16,64")
    ap.add_argument("--context", type=int, default=32768, help="context tokens per stream (at most)")
    ap.add_argument("--context-step", type=int, default=1024, help="a reduced context is a multiple of this")
    ap.add_argument("--query-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--phase1-chunk", type=int, default=None,
                    help="the server's --phase1-chunk (serve-local, or the worker); 0 encodes each "
                         "request at admission, so all streams of a level decode together sooner "
                         "(default: the server's, chunks interleaved with the running decodes)")
    ap.add_argument("--shared-context", action="store_true", help="one document for all streams of a level")
    ap.add_argument("--token-chunks", choices=("logprobs", "text"), default="logprobs")
    ap.add_argument("--vocab", type=int, help="ids are drawn below this (default: the config's, else 256)")
    ap.add_argument("--kv-budget-bytes", default="auto",
                    help="memory for the KV of all streams: bytes, 'auto' (GPU free memory after loading, "
                         "cuda only) or 'none'")
    ap.add_argument("--kv-dtype-bytes", type=int, help="bytes per K/V element (default 2 on cuda, 4 on cpu)")
    ap.add_argument("--kv-fraction", type=float, default=0.7,
                    help="share of the budget the streams' KV may take (the rest: activations, scratch)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--title", default="Throughput over HTTP")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    # SIGTERM (a caller's timeout) unwinds through the finally below, which stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    counts = [int(s) for s in args.streams.split(",") if s]
    if not counts or min(counts) < 1:
        sys.exit("--streams must list positive counts")

    cfg = None
    if args.config:
        with open(args.config) as f:
            cfg = json.load(f)
    vocab = args.vocab or (cfg["vocab_size"] if cfg else 256)
    # Byte-sized vocabularies: plain bytes (0..255) only; large ones: clear of the low special ids.
    args.id_range = (0, min(vocab, 256)) if vocab <= 512 else (1000, vocab - 1000)
    dtype_bytes = args.kv_dtype_bytes or (2 if args.device == "cuda" else 4)
    per_token = model_kv_bytes_per_token(cfg, dtype_bytes) if cfg else None

    tmp = tempfile.TemporaryDirectory(prefix="starattn-throughput-")
    log = open(args.server_log, "a") if args.server_log else subprocess.DEVNULL
    procs = []
    try:
        if args.url:
            u = urllib.parse.urlparse(args.url)
            host, port = u.hostname, u.port
        else:
            host, port, procs = start_server(args, tmp.name, log)
        budget = None
        if args.kv_budget_bytes == "auto":
            budget = gpu_free_bytes() if args.device == "cuda" else None
        elif args.kv_budget_bytes != "none":
            budget = int(args.kv_budget_bytes)
        if budget and not per_token:
            sys.exit("a KV budget needs --config (KV bytes per token)")
        rng = random.Random(args.seed)
        # Warm-up: kernels, allocator growth and first-request costs of a fresh server stay out of
        # the rows (two short streams, a short context).
        warm, _ = run_level(host, port, args, 2, min(args.context, 256), rng, max_tokens=4)
        if any(s.error for s in warm):
            sys.exit(f"warm-up failed: {[s.error for s in warm if s.error][:2]}")
        rows = []
        for n in counts:
            context = fitting_context(args, n, per_token, budget)
            if context < args.context_step:
                rows.append({"streams": n, "context": 0, "errors": 0, "note": "KV of this many streams does not fit"})
                continue
            streams, wall = run_level(host, port, args, n, context, rng)
            row = summarize(n, context, streams, wall)
            rows.append(row)
            print(f"streams {n}: context {context}, {row.get('tokens_per_s') or 0:.1f} tokens/s, "
                  f"ITL p50 {row.get('itl_p50_ms') or 0:.2f} ms, errors {row['errors']} ({wall:.1f} s)",
                  file=sys.stderr, flush=True)
            if row["errors"]:
                print(f"  first errors: {row['first_errors']}", file=sys.stderr, flush=True)
    finally:
        stop_server(procs)
        if log is not subprocess.DEVNULL:
            log.close()
        tmp.cleanup()
    goals = add_ratios(rows)
    what = (f"{'one shared document' if args.shared_context else 'a random context per stream'}, "
            f"{args.query_tokens}-token query, {args.max_tokens} new tokens, greedy, ignore_eos, "
            f"chunks by {args.token_chunks}")
    budget_note = f"KV budget {budget / 2**30:.1f} GiB x {args.kv_fraction}" if budget else "no KV budget"
    print(markdown(rows, goals, f"{args.title} ({what}; {budget_note})"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "goals": goals, "settings": {
                "streams": counts, "context": args.context, "query_tokens": args.query_tokens,
                "max_tokens": args.max_tokens, "shared_context": args.shared_context,
                "token_chunks": args.token_chunks, "server": "url" if args.url else args.server,
                "config": args.config, "device": args.device, "kv_budget_bytes": budget,
                "kv_bytes_per_token": per_token}}, f, indent=1)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
