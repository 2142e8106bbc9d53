#!/usr/bin/env python3
"""Markdown accuracy table from `starattn eval --json` files (docs/ACCURACY.md).

One row per task and length; one column group per configuration found in the files (full, star
with each block/anchor setting). Star columns give the score, the ratio to full attention on the
same prompts, and how many answers were identical to full attention's.

usage: tools/accuracy/table.py FILE.json [FILE.json ...]
"""
import json
import sys


def config_name(r):
    if r["mode"] == "full":
        return "full"
    anchor = f"A={r['anchor_size']}" if r["use_anchor"] else "no anchor"
    return f"star B={r['block_size']} {anchor}"


def config_order(name):
    """full first, then star by falling block size, the no-anchor ablation last."""
    block = int(name.split("B=")[1].split()[0]) if "B=" in name else 0
    return (name != "full", "no anchor" in name, -block)


def main(paths):
    # (task, length) -> config -> samples; files with other seeds add samples to the same cell.
    rows = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["results"]:
                cell = rows.setdefault((r["task"], r["length"]), {})
                cell.setdefault(config_name(r), []).extend(r["samples"])
    print("| task | length | samples | config | score | star/full | answers = full's |")
    print("|---|---|---|---|---|---|---|")
    for (task, length), configs in sorted(rows.items()):
        full = {s["seed"]: s for s in configs.get("full", [])}
        full_score = mean(full.values())
        for name in sorted(configs, key=config_order):
            samples = configs[name]
            score = mean(samples)
            ratio = same = ""
            if full and name != "full":
                # Paired by instance seed: the same prompt in both modes.
                pairs = [(full[s["seed"]], s) for s in samples if s["seed"] in full]
                ratio = f"{score / full_score:.2f}" if full_score > 0 else "n/a (full 0)"
                agree = sum(a["output"].strip() == b["output"].strip() for a, b in pairs)
                same = f"{agree}/{len(pairs)}"
            print(f"| {task} | {length} | {len(samples)} | {name} | {score:.1f} | {ratio} | {same} |")


def mean(samples):
    samples = list(samples)
    return 100.0 * sum(s["score"] for s in samples) / len(samples) if samples else 0.0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
