#!/usr/bin/env python3
"""Writes the model card (README.md) of a trained model from its run directory (summary.json,
curve.csv, sinks.json and, when present, the smoke eval's eval_*.json).

  python3 tools/train/card.py --run RUNDIR --out models/NAME/README.md [--eval-table FILE]

RUNDIR is what run_on_device.sh packs into run.tar.gz. --eval-table appends a finished
`starattn eval` table (text) under "Evaluation".
"""
from __future__ import annotations

import argparse
import csv
import json
import os


def fmt(x, digits=3):
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def curve_table(rows, keep=14):
    if not rows:
        return "(no curve)"
    picks = sorted({round(i * (len(rows) - 1) / (keep - 1)) for i in range(keep)}) \
        if len(rows) > keep else range(len(rows))
    out = ["| step | time s | length | tokens seen | lr | text loss | answer loss | answer tok acc "
           "| answer exact | tok/s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i in picks:
        r = rows[i]
        out.append(f"| {r['step']} | {float(r['elapsed_s']):.0f} | {r['length']} | "
                   f"{int(r['tokens_seen']) / 1e6:.1f}M | {float(r['lr']):.2e} | "
                   f"{float(r['loss_text']):.3f} | {float(r['loss_answer']):.3f} | "
                   f"{float(r['answer_token_acc']):.3f} | {float(r['answer_exact']):.3f} | "
                   f"{int(float(r['tokens_per_s'])) / 1e3:.0f}K |")
    return "\n".join(out)


def sinks_table(sinks):
    out = ["| sequences | first-token mass | uniform share | first-4 mass | uniform share "
           "| sink heads |", "|---|---:|---:|---:|---:|---:|"]
    for name, g in sinks["groups"].items():
        out.append(f"| {name} ({g['sequences']} x {g['tokens'][0]} tokens) | "
                   f"{g['mean_mass0']:.3f} | {g['uniform0']:.4f} | {g['mean_mass4']:.3f} | "
                   f"{g['uniform4']:.4f} | {g['sink_heads']}/{g['heads']} |")
    out.append("")
    out.append("Per layer (first-token mass, mean and largest head), `ruler_prompt_bos` / "
               "`text_bos` / `text_no_bos`:")
    out.append("")
    out.append("| layer | " + " | ".join(sinks["groups"]) + " |")
    out.append("|---:|" + "---|" * len(sinks["groups"]))
    layers = len(next(iter(sinks["groups"].values()))["per_layer"])
    for layer in range(layers):
        cells = [f"{g['per_layer'][layer]['mean_mass0']:.3f} / {g['per_layer'][layer]['max_mass0']:.3f}"
                 for g in sinks["groups"].values()]
        out.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def held_table(held):
    tasks = sorted({t for v in held.values() for t in v})
    out = ["| length | " + " | ".join(tasks) + " |", "|---:|" + "---:|" * len(tasks)]
    for length, v in held.items():
        out.append(f"| {length} | " + " | ".join(
            f"{v[t]['answer_token_acc']:.2f} / {v[t]['answer_exact']:.2f} ({v[t]['instances']})"
            if t in v else "-" for t in tasks) + " |")
    return "\n".join(out)


def mix_note(args):
    mix = args.get("mix_last", 0.0)
    if not mix:
        return (" Every step of the last stage is at its length (runs before `--mix-last`); the model"
                " learned to end its answers (EOS) at that length and less reliably at shorter ones.")
    return (f" In the last stage {mix:.0%} of the steps go back to an earlier stage's length (drawn"
            " uniformly, `--mix-last`), so what is learned last is not tied to one length.")


def portable_command(command):
    """The run's command line without the machine's directories: the script as the repository
    names it, the binary and the scratch directories as placeholders."""
    out, words = [], command.split()
    for i, w in enumerate(words):
        flag = words[i - 1] if i else ""
        if w.endswith("tools/train/train.py"):
            w = "tools/train/train.py"
        elif flag == "--starattn":
            w = "STARATTN_BIN"
        elif flag in ("--out", "--tmp"):
            w = flag[2:].upper()
        out.append(w)
    return " ".join(out)


def smoke_table(run):
    """The run's own `starattn eval` check (run_on_device.sh), when present."""
    lines = []
    for mode in ("full", "star"):
        path = os.path.join(run, f"eval_{mode}.json")
        if not os.path.exists(path):
            continue
        j = json.load(open(path))
        for r in j["results"]:
            anchor = "-" if r["mode"] == "full" else (r["anchor_size"] if r["use_anchor"] else "none")
            lines.append(f"| {r['task']} | {r['length']} | {r['mode']} | {r['block_size']} | "
                         f"{anchor} | {len(r['samples'])} | {r['score']:.1f} |")
    if not lines:
        return ""
    return ("\nSmoke check right after training (`run_on_device.sh`, seed 0):\n\n"
            "| task | length | mode | block | anchor | samples | score |\n"
            "|---|---:|---|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=None)
    p.add_argument("--eval-table", default=None)
    a = p.parse_args()
    s = json.load(open(os.path.join(a.run, "summary.json")))
    sinks = json.load(open(os.path.join(a.run, "sinks.json")))
    with open(os.path.join(a.run, "curve.csv")) as f:
        rows = list(csv.DictReader(f))
    c, args = s["config"], s["args"]
    name = a.name or os.path.basename(os.path.dirname(os.path.abspath(a.out)))
    final = s.get("final", {})
    stages = ", ".join(f"{L} tokens for {f * 100:.0f}% of the time" for L, f in s["stages"])
    stage_rows = "\n".join(
        f"| {L} | {st['steps']} | {st['tokens'] / 1e6:.1f}M | {st.get('seconds', 0):.0f} | "
        f"{st['tokens'] / max(1e-9, st.get('seconds', 0) or 1e-9) / 1e3:.0f}K | "
        f"{st.get('draws', 0)} / {st.get('pool', 0)} |"
        for L, st in sorted(s["stage_stats"].items(), key=lambda kv: int(kv[0])))
    text_sources = "; ".join(f"{k}: {v[0]} files, {v[1] / 1e6:.1f} MB"
                             for k, v in s["text_sources"].items())
    eval_part = smoke_table(a.run)
    if a.eval_table:
        text = open(a.eval_table).read().rstrip()
        # A markdown file goes in as it is; anything else is shown verbatim.
        eval_part = ("\n" + text + "\n") if a.eval_table.endswith(".md") else \
            ("\n```\n" + text + "\n```\n")
    chk = s.get("transformers_check", {})
    check = (f"max relative error {chk['max_rel_error']:.2e}, argmax agreement "
             f"{chk['argmax_agreement']:.3f} on {chk['tokens']} tokens" if chk.get("checked")
             else chk.get("note", "not run"))
    ec = s.get("starattn_check", {})
    engine_check = (f"max relative error {ec['max_rel_error']:.2e} on {ec['tokens']} tokens, same "
                    f"argmax: {ec['same_argmax']}" if ec.get("checked") else ec.get("note", "not run"))
    card = f"""# {name}

A small byte-level Llama trained from scratch by `tools/train/` for long-context retrieval at 16K
tokens, to evaluate Star Attention (`starattn eval`) on a model that was trained with global
attention at the lengths it is evaluated at.

| | |
|---|---|
| architecture | LlamaForCausalLM (Hugging Face layout, bf16 safetensors, {len(s['shards'])} shards) |
| parameters | {s['parameters'] / 1e6:.2f}M ({c['num_hidden_layers']} layers, hidden {c['hidden_size']}, FFN {c['intermediate_size']}, {c['num_attention_heads']} query heads / {c['num_key_value_heads']} KV heads of dim {c['head_dim']}, tied embeddings: {c['tie_word_embeddings']}) |
| vocabulary | bytes: ids 0-255, BOS 256, EOS 257, PAD 258 (no tokenizer files: starattn's byte tokenizer) |
| positions | RoPE theta {c['rope_theta']:g}, max_position_embeddings {c['max_position_embeddings']} |
| trained on | {s.get('gpu') or s['device']}, torch {s['torch']}, {s['train_seconds'] / 60:.1f} min ({s['steps']} steps, {s['tokens_seen'] / 1e6:.1f}M tokens, {s['tokens_seen'] / s['train_seconds'] / 1e3:.0f}K tokens/s) |
| seeds | torch/numpy {args['seed']}; generator seeds {args['data_seed']}+ (training), {args['held_out_seed']} (held out); `starattn eval` uses small seeds (0 by default) |

## Recipe

- Objective: next-token cross-entropy on every token; loss = CE(text tokens) + {args['answer_weight']} x CE(answer tokens), each a mean over its tokens, so the task answers are learned quickly.
- Attention: global causal attention (PyTorch scaled_dot_product_attention, fused flash/efficient kernels), bf16 autocast, float32 master weights.
- Optimiser: AdamW (betas 0.9/0.95, weight decay {args['weight_decay']} on matrices), peak lr {args['lr']}, linear warm-up over {args['warmup_frac'] * 100:.0f}% of the time budget, cosine decay to {args['min_lr_frac'] * 100:.0f}% by its end; gradient clipping at {args['clip']}; {args['batch_tokens']} tokens per step.
- Curriculum over length, by wall-clock share of the {args['minutes']} min budget: {stages}. Rows of one step share a length (a row holds length + 1 ids: inputs and shifted labels); the last stage, {s['stages'][-1][0]} tokens, is the longest.{mix_note(args)}

| length | steps | tokens | seconds | tokens/s | instances drawn / generated |
|---:|---:|---:|---:|---:|---:|
{stage_rows}

## Data

- {args['task_frac'] * 100:.0f}% of rows: RULER-style instances from the project's generator (`eval/ruler_tasks.cpp`, written with `starattn eval --task all --length L --samples N --seed S --dump-instances FILE`): niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, generated at each stage's length, so the prompts are laid out exactly as the engine lays them out for a byte model (context = BOS + document, query = question + "\\n" + RULER's answer prefix). A row is [context][query][answer][EOS], where the answer is the generator's reference reply (` 1234567.`, ` 1234567, 2345678, 3456789, and 4567890.`, variables or words separated by spaces), which RULER's string_match_all scores 1.
- {args.get('recall_frac', 0) * 100:.0f}% of rows: a recall drill (`data.recall_row`) in the needle tasks' wording: blocks of 2-32 facts "One of the special magic numbers for KEY is: VALUE." with random letter keys, each followed by its questions answered in the answer-prefix form ("The special magic number for KEY mentioned in the provided text is VALUE."); the recalled values count as answer tokens. It supervises the lookup the tasks need many times per row; not an eval task.
- The other rows: varied text, BOS + files separated by EOS, starting at a random line: {text_sources}. One file in 20 (by a hash of its path) is held out for the measurements below.
- Instances per task and length generated: {s['instances']} (lengths -> instances over all tasks).

## Training curve

Losses averaged over the steps since the previous row; answer tokens are those of the task rows and the recall drills; "answer exact" is the share of such rows whose every answer token is the argmax under teacher forcing.

{curve_table(rows)}

Held-out instances (generator seed {args['held_out_seed']}) under teacher forcing: answer-token
accuracy / share of instances whose every answer byte, punctuation and EOS included, is the argmax
(instances). Two instances a cell: a quick check that the tasks were learned, not the evaluation
(that is `starattn eval`, below, scored as RULER scores).

{held_table(s['held_out'])}

## Attention sinks

Average softmax probability that each head puts on the first token (and on the first four) over
query positions >= {sinks['skip']} of held-out sequences of {args['sink_tokens']} tokens, against
the share uniform causal attention would give (1/(i+1) averaged over the same positions). A head
counts as a sink when >= 0.2 of its attention, and >= 10x the uniform share, goes to the first
token. `text_no_bos` is the same text without the leading BOS: what a Star Attention block
encoded without the anchor sees at its start.

{sinks_table(sinks)}

## Checks

- transformers `LlamaForCausalLM.from_pretrained` on this directory vs the training model (weights rounded to bf16 as saved): {check}.
- `starattn run --mode full` (cpu) on this directory vs the training model, next-token logits after a held-out prompt: {engine_check}.

## Evaluation
{eval_part}
The accuracy grid of `docs/ACCURACY.md` on this model (GPU, bf16):

```
tools/accuracy/grid.sh models/{name} OUT 4096,8192,16384 16 --device cuda
python3 tools/accuracy/table.py OUT/*.json
```

## Reproduce

```
cmake --build build --target starattn
STARATTN_BIN=build/tools/starattn tools/train/run_on_device.sh OUT {args['minutes']} --mix-last {args.get('mix_last', 0.0):g}
```

The run's command line: `{portable_command(s.get('command', ''))}`

```
python3 tools/train/card.py --run RUNDIR --out models/{name}/README.md
```

(`run_on_device.sh` runs `tools/train/train.py` with its defaults; run.tar.gz holds the run
directory. Training stops on wall-clock time, so a faster or slower GPU sees more or fewer
tokens.)
"""
    with open(a.out, "w") as f:
        f.write(card)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
