"""After training: save the model (export.py), the curve (curve.csv), held-out task accuracy under
teacher forcing, the attention-sink measurement (sinks.json, sinks.py), the transformers reload
check, and summary.json with everything the model card needs (card.py)."""
from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import torch

import data
import export
import sinks
from model import EOS, PAD

CURVE_FIELDS = ["step", "elapsed_s", "length", "rows", "lr", "loss_text", "loss_answer",
                "answer_token_acc", "answer_exact", "tokens_seen", "tokens_per_s"]


def write_curve(curve, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        for row in curve:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


@torch.no_grad()
def held_out_accuracy(model, held, device, batch_tokens, attention):
    """Per length and task: answer-token accuracy and the share of instances whose whole answer
    (bytes + EOS) is the argmax under teacher forcing (a close proxy for greedy decoding)."""
    model.eval()
    out = {}
    for length, insts in sorted(held.items()):
        per_task = {}
        rows = max(1, batch_tokens // length)
        for i in range(0, len(insts), rows):
            chunk = insts[i:i + rows]
            width = max(len(x.ids) for x in chunk)
            ids = np.full((len(chunk), width), PAD, dtype=np.int64)
            mask = np.zeros_like(ids, dtype=bool)
            for r, inst in enumerate(chunk):
                ids[r, :len(inst.ids)] = inst.ids
                mask[r, inst.answer_start:len(inst.ids)] = True
            t = torch.from_numpy(ids).to(device)
            m = torch.from_numpy(mask).to(device)[:, 1:]
            with attention(), torch.autocast(device.type, dtype=torch.bfloat16,
                                             enabled=device.type == "cuda"):
                pred = model(t[:, :-1]).argmax(-1)
            right = (pred == t[:, 1:]) & m
            for r, inst in enumerate(chunk):
                s = per_task.setdefault(inst.task, {"n": 0, "tok_ok": 0, "tok": 0, "exact": 0})
                s["n"] += 1
                s["tok_ok"] += int(right[r].sum())
                s["tok"] += int(m[r].sum())
                s["exact"] += int(right[r].sum() == m[r].sum())
        out[str(length)] = {task: {"instances": s["n"], "answer_token_acc": s["tok_ok"] / s["tok"],
                                   "answer_exact": s["exact"] / s["n"]}
                            for task, s in sorted(per_task.items())}
    return out


def sink_sequences(held, corpus, length, seed):
    """Held-out sequences of `length` tokens: task prompts (BOS first), text after BOS, and the same
    text without BOS (what a block encoded without the sequence start sees)."""
    groups = {"ruler_prompt_bos": [], "text_bos": [], "text_no_bos": []}
    for inst in held.get(length, []):
        if inst.task in ("niah_single", "vt") and len(groups["ruler_prompt_bos"]) < 2:
            groups["ruler_prompt_bos"].append(inst.ids[:inst.answer_start].tolist())
    docs = corpus.held_out or corpus.train
    rng = np.random.default_rng(seed)
    for _ in range(2):
        row = data.text_row(docs, length + 1, rng).tolist()
        groups["text_bos"].append(row[:length])
        groups["text_no_bos"].append(row[1:])
    return groups


def _guarded(check, *args):
    """A failed check is reported, not raised: the model is already saved."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001
        return {"checked": False, "note": f"{type(e).__name__}: {e}"[:600]}


def file_sizes(root):
    return {os.path.relpath(os.path.join(d, f), root): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(root) for f in files}


def finish(model, shape, args, run, curve, held, corpus, device, t0, attention):
    def log(msg):
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    model.eval()
    model_dir = os.path.join(args.out, "model")
    shards = export.save_model(model, model_dir, int(args.shard_mb * (1 << 20)))
    log(f"saved {model_dir}: {', '.join(shards)}")
    write_curve(curve, os.path.join(args.out, "curve.csv"))

    t = time.time()
    held_acc = held_out_accuracy(model, held, device, args.batch_tokens, attention)
    for length, tasks in held_acc.items():
        log(f"held-out L={length}: " + ", ".join(
            f"{k} {v['answer_exact']:.2f}/{v['answer_token_acc']:.2f}" for k, v in tasks.items()))

    groups = sink_sequences(held, corpus, args.sink_tokens, args.seed + 1)
    sink = sinks.measure(model, groups, device)
    with open(os.path.join(args.out, "sinks.json"), "w") as f:
        json.dump(sink, f, indent=1)
    print(sinks.report(sink), flush=True)

    # A held-out prompt of up to 2K tokens (RoPE well past the short range).
    probe = (groups["ruler_prompt_bos"] or groups["text_bos"])[0][:2048]
    check = _guarded(export.check_with_transformers, model, model_dir, probe)
    log(f"transformers reload check: {check}")
    engine_check = _guarded(export.check_with_starattn, model, model_dir, args.starattn, probe)
    log(f"starattn (cpu, full) vs training model, next-token logits: {engine_check}")
    finish_seconds = time.time() - t

    last = curve[-1] if curve else {}
    summary = dict(run)
    summary.update({
        "name": os.path.basename(os.path.normpath(args.out)),
        "config": shape.hf_config(), "shards": shards, "files": file_sizes(model_dir),
        "final": last, "held_out": held_acc,
        "sinks": {name: {k: g[k] for k in ("mean_mass0", "mean_mass4", "uniform0", "uniform4",
                                            "sink_heads", "heads", "per_layer")}
                  for name, g in sink["groups"].items()},
        "transformers_check": check, "starattn_check": engine_check,
        "finish_seconds": finish_seconds,
        "eos_token_id": EOS,
    })
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    log(f"wrote {args.out}: summary.json, curve.csv, sinks.json, model/")
