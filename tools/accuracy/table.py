#!/usr/bin/env python3
"""Markdown accuracy table from `starattn eval --json` files (docs/ACCURACY.md).

One row per task and length; one column group per configuration found in the files (full, star
with each block/anchor setting). Star columns give the score, the ratio to full attention on the
same prompts, and how many answers were identical to full attention's.

With --pooled, one row per length and star configuration instead: the sum of its task scores over
the sum of full attention's, over the tasks where full attention scores above zero (a task the
model cannot do says nothing about star attention). --pooled also reads a table this script
printed (FILE.md), for runs whose JSON files were not kept. With --wide (same inputs), one row per
task and length and one column per configuration named by its block's share of L, e.g. "L/4":
score (star/full).

usage: tools/accuracy/table.py [--pooled | --wide] FILE.json|FILE.md [...]
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


def main(args):
    paths = [a for a in args if a not in ("--pooled", "--wide")]
    if "--pooled" in args:
        print_pooled(paths)
        return
    if "--wide" in args:
        print_wide(paths)
        return
    rows = load_samples(paths)
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


def load_samples(paths):
    """(task, length) -> config -> samples, from `starattn eval --json` files; files with other
    seeds add samples to the same cell."""
    rows = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["results"]:
                cell = rows.setdefault((r["task"], r["length"]), {})
                cell.setdefault(config_name(r), []).extend(r["samples"])
    return rows


def cell_scores(paths):
    """(task, length) -> config -> score, from JSON files or from a table printed by main()."""
    cells = {}
    for path in paths:
        if path.endswith(".md"):
            with open(path) as f:
                for line in f:
                    parts = [p.strip() for p in line.strip().strip("|").split("|")]
                    if len(parts) < 5 or not parts[1].isdigit():
                        continue
                    cells.setdefault((parts[0], int(parts[1])), {})[parts[3]] = float(parts[4])
            continue
        for cell, configs in load_samples([path]).items():
            for name, samples in configs.items():
                cells.setdefault(cell, {})[name] = mean(samples)
    return cells


def print_pooled(paths):
    cells = cell_scores(paths)
    # length -> config -> [star sum, full sum, tasks]
    pools = {}
    for (task, length), configs in cells.items():
        full = configs.get("full", 0.0)
        if full <= 0:
            continue
        for name, score in configs.items():
            if name == "full":
                continue
            p = pools.setdefault(length, {}).setdefault(name, [0.0, 0.0, []])
            p[0] += score
            p[1] += full
            p[2].append(task)
    print("| length | config | tasks pooled | star / full |")
    print("|---:|---|---|---:|")
    for length in sorted(pools):
        for name in sorted(pools[length], key=config_order):
            star, full, tasks = pools[length][name]
            print(f"| {length} | {name} | {len(tasks)}: {', '.join(sorted(tasks))} | {star / full:.2f} |")


def share_label(name, length):
    """'star B=1024 A=1024' at L=4096 -> 'L/4'; the ablation -> 'L/4 no anchor'."""
    if name == "full":
        return name
    block = int(name.split("B=")[1].split()[0])
    label = f"L/{round(length / block)}"
    return label + " no anchor" if "no anchor" in name else label


def print_wide(paths):
    cells = cell_scores(paths)
    labels = []
    for (task, length), configs in cells.items():
        for name in configs:
            label = share_label(name, length)
            if label not in labels:
                labels.append(label)
    labels.sort(key=lambda l: (l != "full", "no anchor" in l, int(l[2:].split()[0]) if l != "full" else 0))
    print("| task | length | " + " | ".join(labels) + " |")
    print("|---|---:|" + "---:|" * len(labels))
    for (task, length), configs in sorted(cells.items()):
        by_label = {share_label(n, length): v for n, v in configs.items()}
        full = by_label.get("full", 0.0)
        row = []
        for label in labels:
            if label not in by_label:
                row.append("-")
            elif label == "full" or full <= 0:
                row.append(f"{by_label[label]:.1f}")
            else:
                row.append(f"{by_label[label]:.1f} ({by_label[label] / full:.2f})")
        print(f"| {task} | {length} | " + " | ".join(row) + " |")


def mean(samples):
    samples = list(samples)
    return 100.0 * sum(s["score"] for s in samples) / len(samples) if samples else 0.0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
