#!/usr/bin/env python3
"""RSS of a head and two cpu workers before and after rounds of concurrent requests (not a test):
the measurement behind docs/RELIABILITY.md's "where the worker's memory went".

  STARATTN_CLI=build/tools/starattn python3 tools/bench/rss_after_concurrency.py --clients 100 --context 2000
Each round sends --clients requests at once (a --context-byte context, 32 tokens each), waits until
the head's /metrics shows no KV placed, and prints every process's RSS (KiB). Standard library only.
"""
import argparse
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "serving"))
import serving_util as su  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--context", type=int, default=2000, help="context bytes (tokens: byte model)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    c = su.Cluster(workers=2, threads=1)
    try:
        def one(seed, tokens):
            rng = random.Random(seed)
            ctx = "".join(rng.choice("abcdefghij klmnop") for _ in range(a.context))
            su.http(c.port, "POST", "/v1/completions", {"prompt": ctx, "query": "q?", "max_tokens": tokens,
                                                         "ignore_eos": True}, timeout=600)

        def rss():
            out = {"head": su.rss_kib(c.head.pid)}
            out.update({"w%d" % i: su.rss_kib(w.pid) for i, w in enumerate(c.workers)})
            return out

        for i in range(4):
            one(i, 8)
        time.sleep(1)
        print("after 4 sequential requests:", rss(), flush=True)
        for r in range(a.rounds):
            threads = [threading.Thread(target=one, args=(100 + r * 1000 + i, 32)) for i in range(a.clients)]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            su.wait_for(lambda: sum(c.kv_held().values()) == 0, 60, "the KV to be released")
            time.sleep(1)
            print("round %d: %d concurrent x %d bytes (%.1f s):" % (r, a.clients, a.context, time.time() - t0),
                  rss(), "KV placed:", c.kv_held(), flush=True)
    finally:
        c.close()


if __name__ == "__main__":
    main()
