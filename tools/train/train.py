#!/usr/bin/env python3
"""Trains starattn's long-context byte-level Llama: global causal attention, a language-modelling
loss over varied text plus RULER-style task instances (the project's own generator), a curriculum
over length ending at 16K tokens, stopped on a time budget. See tools/train/README.md.

  python3 tools/train/train.py --starattn /tmp/bundle/bin/starattn --out OUTDIR --minutes 7

Writes OUTDIR/model (Hugging Face Llama directory, bf16 shards), OUTDIR/curve.csv,
OUTDIR/summary.json, OUTDIR/sinks.json (finish.py).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import finish  # noqa: E402
from model import PAD, LlamaForCausalLM, LlamaShape  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--starattn", default=os.environ.get("STARATTN_BIN", "build/tools/starattn"),
                   help="the starattn binary (env STARATTN_BIN)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--minutes", type=float, required=True,
                   help="training-loop time budget (data generation and the final steps come on top)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=20241126, help="torch / numpy seed")
    p.add_argument("--data-seed", type=int, default=1000,
                   help="first generator seed of the training instances (eval uses small seeds)")
    p.add_argument("--held-out-seed", type=int, default=999)
    # shape
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=500000.0)
    p.add_argument("--max-positions", type=int, default=32768)
    p.add_argument("--untied", action="store_true", help="separate lm_head")
    # schedule
    p.add_argument("--stages", default="1024:0.35,4096:0.15,8192:0.1,16384:0.4",
                   help="LENGTH:FRACTION of the time budget, in order")
    p.add_argument("--mix-last", type=float, default=0.25,
                   help="share of the last stage's steps at an earlier stage's length (drawn "
                        "uniformly), so what is learned last is not tied to one length")
    p.add_argument("--batch-tokens", type=int, default=65536, help="tokens per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup-frac", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--answer-weight", type=float, default=4.0,
                   help="loss = CE(text tokens) + W * CE(answer tokens), each a mean")
    p.add_argument("--task-frac", type=float, default=0.6, help="share of rows that are tasks")
    p.add_argument("--recall-frac", type=float, default=0.25,
                   help="share of rows that are recall drills (data.recall_row)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    # data
    p.add_argument("--est-tps", type=float, default=800000,
                   help="expected tokens/s at the longest stage, sizes the instance pool")
    p.add_argument("--reuse", type=float, default=2.0, help="planned views of each instance")
    p.add_argument("--text-mb", type=float, default=48, help="varied text to read, MB")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    p.add_argument("--tmp", default="/tmp/starattn-train")
    # outputs
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--sink-tokens", type=int, default=4096)
    p.add_argument("--shard-mb", type=float, default=12)
    return p.parse_args(argv)


def parse_stages(text):
    stages = []
    for part in text.split(","):
        length, frac = part.split(":")
        stages.append((int(length), float(frac)))
    total = sum(f for _, f in stages)
    return [(length, f / total) for length, f in stages]


def lr_at(frac, args):
    if frac < args.warmup_frac:
        return args.lr * max(frac / args.warmup_frac, 0.01)
    t = (frac - args.warmup_frac) / max(1e-9, 1 - args.warmup_frac)
    low = args.lr * args.min_lr_frac
    return low + 0.5 * (args.lr - low) * (1 + math.cos(math.pi * min(1.0, t)))


def stage_at(frac, stages):
    """Index of the stage that the time share frac falls in."""
    acc = 0.0
    for i, (_, f) in enumerate(stages):
        acc += f
        if frac < acc:
            return i
    return len(stages) - 1


def step_length(stage, stages, mix_last, rng):
    """The row length of one step. In the last stage a share mix_last of the steps goes back to
    an earlier stage's length: a run that ended on one length only (the first trained model)
    learned to end its answers (EOS) at that length and not at the shorter ones."""
    if stage == len(stages) - 1 and stage > 0 and rng.random() < mix_last:
        return stages[int(rng.integers(0, stage))][0]
    return stages[stage][0]


def log(t0, msg):
    print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)


def pick_attention(model, device, t0):
    """On CUDA, SDPA restricted to the fused kernels (flash first): a 16K-token math fallback would
    run out of memory. Returns a context-manager factory."""
    from contextlib import nullcontext
    if device.type != "cuda":
        return nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    try:
        with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16):
            model(torch.zeros(1, 256, dtype=torch.long, device=device)).sum().backward()
        model.zero_grad(set_to_none=True)
        log(t0, "attention: fused SDPA kernels (flash / efficient)")
        return lambda: sdpa_kernel(fused)
    except RuntimeError as e:
        log(t0, f"attention: fused SDPA unavailable ({e}); default backend")
        model.zero_grad(set_to_none=True)
        return nullcontext


def train(args):
    t0 = time.time()
    stages = parse_stages(args.stages)
    if args.hidden != args.heads * args.head_dim or args.heads % args.kv_heads:
        sys.exit("hidden must be heads * head_dim (transformers checks it) and kv-heads divide heads")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data: instances from the C++ generator, in parallel, before the GPU starts.
    plan = data.plan_instances(stages, args.minutes, args.est_tps, args.task_frac, args.reuse)
    log(t0, f"generating instances with {args.starattn} ({args.jobs} jobs): "
            + ", ".join(f"L={k}: {v}/task" for k, v in sorted(plan.items())))
    instances = data.generate_instances(args.starattn, plan, args.data_seed,
                                        os.path.join(args.tmp, "train"), args.jobs)
    sink_len = args.sink_tokens
    held_lengths = sorted({length for length, _ in stages} | {sink_len})
    held = data.generate_instances(args.starattn, {L: 2 for L in held_lengths},
                                   args.held_out_seed, os.path.join(args.tmp, "held"), args.jobs)
    n_inst = sum(len(v) for v in instances.values())
    n_tok = sum(len(i.ids) for v in instances.values() for i in v)
    log(t0, f"instances: {n_inst} ({n_tok / 1e6:.1f}M tokens)")
    corpus = data.collect_text(REPO, int(args.text_mb * 1e6))
    log(t0, f"text: {len(corpus.train)} files, {corpus.train_bytes() / 1e6:.1f} MB train, "
            f"{len(corpus.held_out)} held out; " + "; ".join(
                f"{k}: {f} files {b / 1e6:.1f} MB" for k, (f, b) in corpus.sources.items()))
    batcher = data.Batcher(instances, corpus, args.task_frac, args.seed, args.recall_frac)
    data_seconds = time.time() - t0

    # ---- model
    shape = LlamaShape(hidden_size=args.hidden, intermediate_size=args.ffn,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                       rope_theta=args.rope_theta, max_position_embeddings=args.max_positions,
                       tie_word_embeddings=not args.untied)
    model = LlamaForCausalLM(shape).to(device)
    n_params = model.num_parameters()
    log(t0, f"model: {n_params / 1e6:.2f}M parameters {shape.as_dict()}")
    attention = pick_attention(model, device, t0)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=device.type == "cuda")
    step_model = torch.compile(model) if args.compile else model

    # ---- loop, stopped on the time budget
    budget = args.minutes * 60
    curve = []
    stage_stats = {}
    zero = lambda: torch.zeros((), device=device, dtype=torch.float64)
    acc = {k: zero() for k in ("text_ce", "text_n", "ans_ce", "ans_n", "ans_ok", "rows_ok",
                               "rows")}
    tokens_seen = 0
    step = 0
    cur_stage = None
    mix_rng = np.random.default_rng(args.seed + 2)
    t_train = time.time()
    t_step = t_train
    t_last, tok_last = t_train, 0
    log(t0, f"training for {args.minutes} min, stages {stages}, {args.batch_tokens} tokens/step")
    while True:
        elapsed = time.time() - t_train
        frac = elapsed / budget
        if frac >= 1.0:
            break
        stage = stage_at(frac, stages)
        length = step_length(stage, stages, args.mix_last, mix_rng)
        rows = max(1, args.batch_tokens // length)
        if stage != cur_stage:
            mix = (f", {args.mix_last:.0%} of steps at earlier lengths"
                   if stage == len(stages) - 1 and stage > 0 and args.mix_last > 0 else "")
            log(t0, f"stage: length {stages[stage][0]}{mix} (step {step})")
            cur_stage = stage
        lr = lr_at(frac, args)
        for g in opt.param_groups:
            g["lr"] = lr
        ids_np, ans_np = batcher.batch(length, rows)
        ids = torch.from_numpy(ids_np)
        ans = torch.from_numpy(ans_np)
        if device.type == "cuda":
            ids, ans = ids.pin_memory().to(device, non_blocking=True), ans.pin_memory().to(
                device, non_blocking=True)
        x, y, a = ids[:, :-1], ids[:, 1:], ans[:, 1:]
        with attention(), torch.autocast(device.type, dtype=torch.bfloat16,
                                         enabled=device.type == "cuda"):
            logits = step_model(x)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                             reduction="none").view_as(y)
        valid = y != PAD
        text = valid & ~a
        n_text, n_ans = text.sum(), a.sum()
        loss_text = (ce * text).sum() / n_text.clamp_min(1)
        loss_ans = (ce * a).sum() / n_ans.clamp_min(1)
        loss = loss_text + args.answer_weight * loss_ans
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        with torch.no_grad():
            right = (logits.argmax(-1) == y) & a
            has_ans = a.any(-1)
            acc["text_ce"] += (ce * text).sum()
            acc["text_n"] += n_text
            acc["ans_ce"] += (ce * a).sum()
            acc["ans_n"] += n_ans
            acc["ans_ok"] += right.sum()
            acc["rows_ok"] += (has_ans & (right.sum(-1) == a.sum(-1))).sum()
            acc["rows"] += has_ans.sum()
        step += 1
        tokens_seen += rows * length
        st = stage_stats.setdefault(length, {"steps": 0, "tokens": 0, "seconds": 0.0})
        st["steps"] += 1
        st["tokens"] += rows * length
        # Wall time per length, step by step (lengths alternate in the last stage). The GPU runs
        # behind the host by at most a few steps, so the sums are right to a step or two.
        now_step = time.time()
        st["seconds"] += now_step - t_step
        t_step = now_step
        if step % args.log_every == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.time()
            v = {k: t.item() for k, t in acc.items()}
            tps = (tokens_seen - tok_last) / max(1e-9, now - t_last)
            row = {"step": step, "elapsed_s": round(now - t_train, 2), "length": length,
                   "rows": rows, "lr": lr,
                   "loss_text": v["text_ce"] / max(1, v["text_n"]),
                   "loss_answer": v["ans_ce"] / max(1, v["ans_n"]),
                   "answer_token_acc": v["ans_ok"] / max(1, v["ans_n"]),
                   "answer_exact": v["rows_ok"] / max(1, v["rows"]),
                   "tokens_seen": tokens_seen, "tokens_per_s": round(tps)}
            curve.append(row)
            log(t0, f"step {step} L={length} lr {lr:.2e} text {row['loss_text']:.3f} answer "
                    f"{row['loss_answer']:.3f} acc {row['answer_token_acc']:.3f} exact "
                    f"{row['answer_exact']:.3f} {tps / 1e3:.0f}K tok/s "
                    f"{tokens_seen / 1e6:.1f}M tokens")
            for t in acc.values():
                t.zero_()
            t_last, tok_last = now, tokens_seen
        if device.type == "cuda" and step == 1:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.time() - t_train
    for length, st in stage_stats.items():
        st["seconds"] = round(st["seconds"], 2)
        st["draws"] = batcher.drawn.get(length, 0)
        st["pool"] = len(instances.get(length, []))
    log(t0, f"trained {step} steps, {tokens_seen / 1e6:.1f}M tokens in {train_seconds:.0f} s "
            f"({tokens_seen / max(1e-9, train_seconds) / 1e3:.0f}K tok/s)")

    run = {"args": vars(args), "command": " ".join(sys.argv), "stages": stages, "parameters": n_params, "steps": step,
           "tokens_seen": tokens_seen, "train_seconds": train_seconds,
           "data_seconds": data_seconds, "stage_stats": stage_stats,
           "instances": {str(k): len(v) for k, v in instances.items()},
           "text_sources": corpus.sources, "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "torch": torch.__version__}
    finish.finish(model, shape, args, run, curve, held, corpus, device, t0, attention)


if __name__ == "__main__":
    train(parse_args())
