#!/usr/bin/env python3
"""Load benchmark of the HTTP server (not a test): many concurrent streaming clients on loopback.

Starts `starattn serve-local` on a random model (or uses --url), runs --clients threads that each
send --requests streaming completions one after another, and reports requests/s, generated
tokens/s, time to first token and inter-token latency percentiles (client side: from sending the
request to the first content chunk, and between consecutive chunks) as a Markdown table.

  python3 tools/bench/load_http.py --cli build/tools/starattn --clients 32 --requests 4
  python3 tools/bench/load_http.py --url http://127.0.0.1:8000 --clients 64
Standard library only.
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def one_request(host, port, body, ttft, gaps, tokens, errors):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            errors.append(f"status {r.status}: {r.read()[:200]!r}")
            return
        last = None
        for raw in r:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            now = time.perf_counter()
            if c.get("usage"):
                tokens.append(c["usage"]["completion_tokens"])
            if not c.get("choices") or not c["choices"][0].get("text"):
                continue
            if last is None:
                ttft.append(now - t0)
            else:
                gaps.append(now - last)
            last = now
    except Exception as e:  # noqa: BLE001 - a benchmark reports failures, it does not stop
        errors.append(repr(e))
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server; default: start serve-local")
    ap.add_argument("--cli", default="build/tools/starattn", help="the starattn binary (to start a server)")
    ap.add_argument("--preset", default="tiny", help="random model preset for the started server")
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--io-threads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--context-chars", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    proc = tmp = None
    if args.url:
        u = urllib.parse.urlparse(args.url)
        host, port = u.hostname, u.port
    else:
        tmp = tempfile.TemporaryDirectory(prefix="starattn-load-")
        model = os.path.join(tmp.name, "model")
        subprocess.run([args.cli, "init-model", "--preset", args.preset, "--seed", "1", "--out", model],
                       check=True, stdout=subprocess.DEVNULL)
        proc = subprocess.Popen([args.cli, "serve-local", "--model", model, "--http", "127.0.0.1:0",
                                 "--engines", str(args.engines), "--io-threads", str(args.io_threads),
                                 "--max-queue", str(args.clients * 2)],
                                stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_WAIT_POLICY="passive"))
        m = re.match(r"http://([^:]+):(\d+)", proc.stdout.readline().strip())
        if not m:
            sys.exit("serve-local did not start")
        host, port = m.group(1), int(m.group(2))

    body = json.dumps({"prompt": "x" * args.context_chars, "query": "Summarize.", "max_tokens": args.max_tokens,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    ttft, gaps, tokens, errors = [], [], [], []

    def client():
        for _ in range(args.requests):
            one_request(host, port, body, ttft, gaps, tokens, errors)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if proc:
        proc.terminate()
        proc.wait()
        tmp.cleanup()

    done = len(tokens)
    ms = lambda v: f"{v * 1000:.1f}"  # noqa: E731
    print(f"| clients | requests | errors | requests/s | tokens/s | TTFT p50 / p90 / p99 ms | "
          f"inter-token p50 / p90 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {done} | {len(errors)} | {done / wall:.2f} | {sum(tokens) / wall:.0f} | "
          f"{ms(percentile(ttft, 50))} / {ms(percentile(ttft, 90))} / {ms(percentile(ttft, 99))} | "
          f"{ms(percentile(gaps, 50))} / {ms(percentile(gaps, 90))} / {ms(percentile(gaps, 99))} |")
    if errors:
        print(f"first errors: {errors[:3]}", file=sys.stderr)
    if ttft:
        print(f"(mean TTFT {statistics.mean(ttft) * 1000:.1f} ms over {len(ttft)} requests, "
              f"{len(gaps)} inter-token gaps, wall {wall:.1f} s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
