#!/usr/bin/env python3
"""Compare `starattn run --mode full` with Hugging Face transformers on small random checkpoints.

For each model spec below this script
  1. builds the model with transformers (float32, seeded, larger-than-default init, and random RMSNorm
     weights and biases so that a loader that ignores them, or swaps them, is caught),
  2. saves it as a Hugging Face directory (config.json + model.safetensors),
  3. runs `starattn run --mode full --output ids --dump-logits FILE` on random context/query ids,
  4. runs greedy decoding in transformers (full recompute each step, no generate() API, so it behaves
     the same across transformers 4.x and 5.x) and compares, step by step along HF's greedy path:
       rel_err(t) = max|ours_t - hf_t| / max|hf_t|
     and the generated tokens. The first divergence of the tokens ends the comparison; if HF's top-2
     logits at that step are within --tie-eps, it is reported as a near-tie, not a failure.

Pass = every compared step has rel_err <= --tol, and the token sequences are identical (up to a near-tie).
Exit code 0 iff every model passes.

Config files: transformers 5.x writes RoPE settings as
    "rope_parameters": {"rope_type": ..., "rope_theta": ..., <scaling keys>}
with no top-level "rope_theta"/"rope_scaling"; transformers 4.x (and most checkpoints on the Hub) write
    "rope_theta": ..., "rope_scaling": {"rope_type"|"type": ..., ...} | null.
With --config-style both (the default) each model is tested in both layouts.

Needs Python 3.11+, numpy, torch, transformers, safetensors.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import torch
    import transformers
except ImportError as e:  # pragma: no cover - explained to the user
    sys.exit(f"hf_compare.py: {e}. Install the reference stack first, e.g.\n"
             f"  ./deploy/python-env.sh numpy torch transformers safetensors")


# ---------------------------------------------------------------------------------------------------
# Model specs
# ---------------------------------------------------------------------------------------------------

@dataclass
class Spec:
    name: str
    arch: str                  # llama | qwen2 | mistral
    features: str              # for the report
    config: dict               # kwargs for the transformers config class
    context_len: int
    query_len: int
    seed: int
    expected_rope: dict = field(default_factory=dict)  # theta + scaling, to check HF applied them


def specs() -> list[Spec]:
    llama3_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return [
        Spec("llama-gqa-rope-llama3", "llama",
             "GQA 8/2, head 32, llama3 RoPE scaling (orig 64), theta 5e5, untied",
             dict(vocab_size=384, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                  rope_theta=500000.0, rope_scaling=dict(llama3_scaling),
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2),
             context_len=257, query_len=13, seed=1,
             expected_rope=dict(theta=500000.0, scaling=llama3_scaling, head_dim=32)),
        Spec("qwen2-bias-tied", "qwen2",
             "GQA 6/2, head 32, QKV bias, tied embeddings, theta 1e6",
             dict(vocab_size=320, hidden_size=192, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, rope_theta=1000000.0,
                  max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  use_sliding_window=False, sliding_window=None, eos_token_id=3),
             context_len=181, query_len=17, seed=2,
             expected_rope=dict(theta=1000000.0, scaling=None, head_dim=32)),
        Spec("mistral-gqa", "mistral",
             "GQA 4/1, head 32, no sliding window, theta 1e6, untied",
             dict(vocab_size=400, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, rope_theta=1000000.0,
                  sliding_window=None, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
             context_len=293, query_len=11, seed=3,
             expected_rope=dict(theta=1000000.0, scaling=None, head_dim=32)),
        Spec("llama-headdim48-bias", "llama",
             "GQA 4/2, explicit head_dim 48 != hidden/heads 32, attention_bias (q/k/v/o), theta 2e4",
             dict(vocab_size=300, hidden_size=128, intermediate_size=320, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=48, attention_bias=True,
                  rope_theta=20000.0, max_position_embeddings=4096, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
             context_len=128, query_len=20, seed=4,
             expected_rope=dict(theta=20000.0, scaling=None, head_dim=48)),
        # Head sizes the CUDA backend's attention kernels take (64, 128); the cpu runs them too.
        Spec("llama-gqa-d64-llama3", "llama",
             "GQA 8/2, head 64, llama3 RoPE scaling (orig 64), theta 5e5, tied",
             dict(vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                  rope_theta=500000.0, rope_scaling=dict(llama3_scaling),
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2),
             context_len=300, query_len=12, seed=5,
             expected_rope=dict(theta=500000.0, scaling=llama3_scaling, head_dim=64)),
        Spec("qwen2-d128-bias", "qwen2",
             "GQA 4/2, head 128, QKV bias, theta 1e6, untied",
             dict(vocab_size=448, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                  max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  use_sliding_window=False, sliding_window=None, eos_token_id=3),
             context_len=240, query_len=16, seed=6,
             expected_rope=dict(theta=1000000.0, scaling=None, head_dim=128)),
    ]


# The CUDA backend's attention supports these head sizes only.
CUDA_HEAD_DIMS = (64, 128)


# ---------------------------------------------------------------------------------------------------
# Building and saving
# ---------------------------------------------------------------------------------------------------

def model_classes(arch: str):
    if arch == "llama":
        return transformers.LlamaConfig, transformers.LlamaForCausalLM
    if arch == "qwen2":
        return transformers.Qwen2Config, transformers.Qwen2ForCausalLM
    if arch == "mistral":
        return transformers.MistralConfig, transformers.MistralForCausalLM
    raise ValueError(arch)


def build_model(spec: Spec, init_range: float):
    config_cls, model_cls = model_classes(spec.arch)
    # rope_theta/rope_scaling as keyword arguments work in transformers 4.x and are converted to
    # rope_parameters by 5.x.
    cfg = config_cls(initializer_range=init_range, **spec.config)
    torch.manual_seed(spec.seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # RMSNorm weights start at 1 and biases at 0: randomise them, else a loader that skips
            # them (or mixes up input/post-attention norms) would still pass.
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    model = model.float().eval()
    check_rope(model, spec)
    return model


def expected_inv_freq(theta: float, head_dim: int, scaling: dict | None) -> np.ndarray:
    """RoPE inverse frequencies as transformers computes them (default and llama3 types)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not scaling:
        return inv
    assert scaling["rope_type"] == "llama3"
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    out = np.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wl >= high_wl) & (wl <= low_wl)
    return np.where(medium, smoothed, out)


def check_rope(model, spec: Spec) -> None:
    """Fails if transformers did not apply the RoPE settings we asked for (guards against a config
    key that one transformers version silently ignores, which would make the comparison weaker)."""
    rot = getattr(getattr(model, "model", None), "rotary_emb", None)
    inv = getattr(rot, "inv_freq", None)
    if inv is None:
        print(f"  note: {spec.name}: cannot see HF's rotary inv_freq; RoPE settings not checked")
        return
    e = spec.expected_rope
    want = expected_inv_freq(e["theta"], e["head_dim"], e["scaling"])
    got = inv.detach().double().cpu().numpy()
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=0):
        raise SystemExit(f"hf_compare.py: {spec.name}: transformers {transformers.__version__} did not apply "
                         f"the requested RoPE settings (inv_freq {got[:4]} vs expected {want[:4]})")
    if spec.expected_rope["scaling"] and np.allclose(want, expected_inv_freq(e["theta"], e["head_dim"], None)):
        raise SystemExit(f"hf_compare.py: {spec.name}: RoPE scaling has no effect; the test would be void")


def save_model(model, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers 4.x needs safe_serialization=True (its default since 4.35); 5.x always writes
    # safetensors and has no such parameter.
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        model.save_pretrained(out_dir)
    if not list(out_dir.glob("*.safetensors")):
        raise SystemExit(f"hf_compare.py: save_pretrained wrote no .safetensors file in {out_dir}")
    # These random models have no tokenizer.json: say that their ids are bytes (starattn refuses a
    # larger vocabulary without its tokenizer otherwise).
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["starattn_byte_vocabulary"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def to_legacy_config(cfg: dict) -> dict:
    """The transformers 4.x layout: top-level rope_theta and rope_scaling, no rope_parameters."""
    cfg = copy.deepcopy(cfg)
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        rp = dict(rp)
        if "rope_theta" in rp:
            cfg["rope_theta"] = rp.pop("rope_theta")
        rope_type = rp.get("rope_type", rp.get("type", "default"))
        cfg["rope_scaling"] = None if rope_type == "default" else rp
    return cfg


def write_variants(model_dir: Path, style: str) -> list[tuple[str, Path]]:
    """Returns [(label, dir)] for the config layouts to test."""
    native = json.loads((model_dir / "config.json").read_text())
    legacy = to_legacy_config(native)
    out: list[tuple[str, Path]] = []
    if style in ("hf", "both"):
        label = "rope_parameters" if "rope_parameters" in native else "rope_scaling"
        out.append((label, model_dir))
    if style in ("legacy", "both") and (style == "legacy" or legacy != native):
        legacy_dir = model_dir.with_name(model_dir.name + "-legacy")
        legacy_dir.mkdir(exist_ok=True)
        for f in model_dir.iterdir():
            if f.name != "config.json":
                target = legacy_dir / f.name
                if not target.exists():
                    try:
                        os.link(f, target)
                    except OSError:
                        shutil.copy2(f, target)
        (legacy_dir / "config.json").write_text(json.dumps(legacy, indent=2, sort_keys=True) + "\n")
        out.append(("rope_scaling", legacy_dir))
    return out


# ---------------------------------------------------------------------------------------------------
# Running both sides
# ---------------------------------------------------------------------------------------------------

def eos_ids(model) -> set[int]:
    e = model.config.eos_token_id
    if e is None:
        return set()
    return set(e) if isinstance(e, (list, tuple)) else {int(e)}


@torch.no_grad()
def hf_greedy(model, ids: list[int], steps: int, eos: set[int], device: str, dtype) -> tuple[list[int], np.ndarray]:
    """Greedy decoding by full recomputation; returns tokens and the logits each was chosen from."""
    m = model.to(device=device, dtype=dtype)
    seq = list(ids)
    tokens, rows = [], []
    for _ in range(steps):
        x = torch.tensor([seq], dtype=torch.long, device=device)
        logits = m(input_ids=x).logits[0, -1].float().cpu().numpy().astype(np.float64)
        tok = int(np.argmax(logits))
        tokens.append(tok)
        rows.append(logits)
        if tok in eos:
            break
        seq.append(tok)
    return tokens, np.stack(rows)


@torch.no_grad()
def hf_forced(model, ids: list[int], tokens: list[int], device: str, dtype) -> np.ndarray:
    """Logits for each of `tokens` given the ones before it (one forward, teacher-forced)."""
    m = model.to(device=device, dtype=dtype)
    x = torch.tensor([list(ids) + list(tokens[:-1])], dtype=torch.long, device=device)
    logits = m(input_ids=x).logits[0, len(ids) - 1:].float().cpu().numpy().astype(np.float64)
    return logits


def run_starattn(exe: str, model_dir: Path, context: list[int], query: list[int], max_tokens: int,
                 device: str, logits_file: Path, vocab: int, extra: list[str]) -> tuple[list[int], np.ndarray, float]:
    cmd = [exe, "run", "--model", str(model_dir),
           "--context-ids", ",".join(map(str, context)), "--query-ids", ",".join(map(str, query)),
           "--max-tokens", str(max_tokens), "--mode", "full", "--output", "ids",
           "--dump-logits", str(logits_file), "--device", device, *extra]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        shown = " ".join(cmd[:4] + ["..."] + cmd[-9:])
        raise RuntimeError(f"starattn exited {p.returncode}: {shown}\nstderr:\n{p.stderr.strip()[-3000:]}")
    try:
        tokens = [int(t) for t in p.stdout.split()]
    except ValueError:
        raise RuntimeError(f"starattn printed something other than ids on stdout: {p.stdout[:500]!r}")
    raw = np.fromfile(logits_file, dtype="<f4")
    if raw.size != len(tokens) * vocab:
        raise RuntimeError(f"{logits_file}: {raw.size} floats for {len(tokens)} tokens x vocab {vocab} "
                           f"(expected {len(tokens) * vocab})")
    return tokens, raw.reshape(len(tokens), vocab).astype(np.float64), dt


@dataclass
class Result:
    model: str
    features: str
    config_style: str
    context_len: int
    query_len: int
    steps: int = 0
    max_rel: float = float("nan")
    identical: str = "no"
    passed: bool = False
    note: str = ""
    hf_bf16_rel: float = float("nan")  # transformers' own bf16 error against its float32


def compare(ours_tok, ours_logits, hf_tok, hf_logits, tol: float, tie_eps: float | None, res: Result) -> None:
    n = min(len(ours_tok), len(hf_tok))
    rel = []
    divergence = None
    for t in range(n):
        hf_row, our_row = hf_logits[t], ours_logits[t]
        rel.append(float(np.max(np.abs(our_row - hf_row)) / max(np.max(np.abs(hf_row)), 1e-30)))
        if ours_tok[t] != hf_tok[t]:
            divergence = t
            break
    res.steps = len(rel)
    res.max_rel = float(np.max(rel)) if rel else float("nan")  # NaN propagates
    bad_steps = [t for t, r in enumerate(rel) if not (r <= tol)]  # NaN counts as bad
    if divergence is None and len(ours_tok) == len(hf_tok):
        res.identical = "yes"
        res.passed = not bad_steps
    elif divergence is None:
        res.identical = "no"
        res.note = f"lengths differ: ours {len(ours_tok)}, HF {len(hf_tok)} (EOS handling?)"
    else:
        t = divergence
        top2 = np.sort(hf_logits[t])[-2:]
        gap = float(top2[1] - top2[0])
        eps = tie_eps if tie_eps is not None else 2 * tol * float(np.max(np.abs(hf_logits[t])))
        if gap <= eps:
            res.identical = f"near-tie at step {t}"
            res.note = (f"step {t}: ours {ours_tok[t]}, HF {hf_tok[t]}, HF top-2 gap {gap:.2e} <= {eps:.1e}; "
                        f"compared up to there")
            res.passed = not bad_steps
        else:
            res.identical = f"no (step {t})"
            res.note = f"step {t}: ours {ours_tok[t]}, HF {hf_tok[t]}, HF top-2 gap {gap:.3g}"
    if bad_steps:
        worst = int(np.argmax(rel))
        res.note = (res.note + "; " if res.note else "") + \
            f"rel err over tol at steps {bad_steps[:5]} (worst {rel[worst]:.3g} at step {worst})"


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------

def find_starattn(arg: str | None) -> str:
    if arg:
        if not (os.path.isfile(arg) and os.access(arg, os.X_OK)):
            sys.exit(f"hf_compare.py: --starattn {arg}: not an executable file")
        return arg
    on_path = shutil.which("starattn")
    if on_path:
        return on_path
    repo = Path(__file__).resolve().parents[2]
    built = repo / "build" / "tools" / "starattn"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    sys.exit("hf_compare.py: starattn not found on PATH nor at build/tools/starattn; build it or pass --starattn")


def markdown(results: list[Result], args, exe: str) -> str:
    lines = [
        f"Full-attention mode vs Hugging Face transformers {transformers.__version__} "
        f"(torch {torch.__version__}), random float32 checkpoints; starattn --device {args.device}, "
        f"HF on {args.hf_device} in {args.hf_dtype}; tolerance {args.tol:g} on max|ours-hf|/max|hf| per step"
        + ("" if args.device == "cpu" else
           ", or transformers' own bf16 error on the same tokens where that is larger") + ".",
        "",
        "| model | arch features | config layout | context / query | steps | max rel logit error "
        "| HF bf16 rel error | tokens identical | pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        err = "n/a" if math.isnan(r.max_rel) else f"{r.max_rel:.2e}"
        bf = "-" if math.isnan(r.hf_bf16_rel) else f"{r.hf_bf16_rel:.2e}"
        lines.append(f"| {r.model} | {r.features} | {r.config_style} | {r.context_len} / {r.query_len} | {r.steps} "
                     f"| {err} | {bf} | {r.identical} | {'PASS' if r.passed else 'FAIL'} |")
    notes = [f"- {r.model} ({r.config_style}): {r.note}" for r in results if r.note]
    if notes:
        lines += ["", "Notes:"] + notes
    lines += ["", "Command: `python3 tools/reference/hf_compare.py " +
              " ".join(a for a in sys.argv[1:]) + "`", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starattn", help="the starattn executable (default: on PATH, else build/tools/starattn)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="starattn's backend (default cpu)")
    ap.add_argument("--tol", type=float, help="max relative logit error (default 1e-3 on cpu, 3e-2 on cuda/bf16)")
    ap.add_argument("--tie-eps", type=float,
                    help="HF top-2 gap that makes a token divergence a near-tie (default 1e-4 on cpu; "
                         "2*tol*max|hf| on cuda)")
    ap.add_argument("--hf-device", choices=["cpu", "cuda"], help="where HF runs (default: cuda if --device cuda "
                    "and torch sees a GPU, else cpu)")
    ap.add_argument("--hf-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="HF's compute dtype (default float32, the exact reference)")
    ap.add_argument("--max-tokens", type=int, default=12, help="tokens to generate (default 12)")
    ap.add_argument("--models", help="comma-separated subset of: " + ", ".join(s.name for s in specs()))
    ap.add_argument("--config-style", choices=["hf", "legacy", "both"], default="both",
                    help="config.json layout(s) given to starattn: as this transformers writes it (hf), the 4.x "
                         "rope_theta/rope_scaling layout (legacy), or both (default)")
    ap.add_argument("--init-range", type=float, default=0.08, help="initializer_range (default 0.08)")
    ap.add_argument("--starattn-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for starattn run (repeatable), e.g. --starattn-arg=--threads=2")
    ap.add_argument("--out-md", type=Path, help="write the results table (markdown) here")
    ap.add_argument("--keep", type=Path, help="keep checkpoints and logits in this folder")
    args = ap.parse_args()

    if args.tol is None:
        args.tol = 1e-3 if args.device == "cpu" else 3e-2
    if args.tie_eps is None and args.device == "cpu":
        args.tie_eps = 1e-4
    if args.hf_device is None:
        args.hf_device = "cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    if args.hf_device == "cuda" and not torch.cuda.is_available():
        sys.exit("hf_compare.py: --hf-device cuda but torch sees no GPU")
    hf_dtype = torch.float32 if args.hf_dtype == "float32" else torch.bfloat16
    exe = find_starattn(args.starattn)

    chosen = specs()
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = set(wanted) - {s.name for s in chosen}
        if unknown:
            sys.exit(f"hf_compare.py: unknown model(s) {sorted(unknown)}; choose from {[s.name for s in chosen]}")
        chosen = [s for s in chosen if s.name in wanted]
    if args.device == "cuda":
        skipped = [s.name for s in chosen if s.expected_rope["head_dim"] not in CUDA_HEAD_DIMS]
        if skipped:
            print(f"hf_compare: on cuda only head sizes {CUDA_HEAD_DIMS} run; leaving out {skipped}")
        chosen = [s for s in chosen if s.expected_rope["head_dim"] in CUDA_HEAD_DIMS]

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:  # save_pretrained's progress bars would clutter the report
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    work = args.keep if args.keep else Path(tempfile.mkdtemp(prefix="hf_compare_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"hf_compare: transformers {transformers.__version__}, torch {torch.__version__}, starattn {exe}, "
          f"work dir {work}")
    results: list[Result] = []
    try:
        for spec in chosen:
            model = build_model(spec, args.init_range)
            model_dir = work / spec.name
            save_model(model, model_dir)
            vocab = model.config.vocab_size
            rng = np.random.default_rng(1000 + spec.seed)
            # Ids from 3 up: 0-2 are pad/bos/eos in these configs.
            context = rng.integers(3, vocab, spec.context_len).tolist()
            query = rng.integers(3, vocab, spec.query_len).tolist()
            hf_tok, hf_logits = hf_greedy(model, context + query, args.max_tokens, eos_ids(model),
                                          args.hf_device, hf_dtype)
            # On a bf16 backend the yardstick is transformers' own bf16 run: its error against its
            # float32 run on the same tokens bounds what rounding alone explains.
            hf_bf16_rel = float("nan")
            tol = args.tol
            if args.device != "cpu" and args.hf_dtype == "float32":
                bf = hf_forced(model, context + query, hf_tok, args.hf_device, torch.bfloat16)
                hf_bf16_rel = max(float(np.max(np.abs(bf[t] - hf_logits[t])) / np.max(np.abs(hf_logits[t])))
                                  for t in range(len(hf_tok)))
                tol = max(args.tol, hf_bf16_rel)
            for label, d in write_variants(model_dir, args.config_style):
                res = Result(spec.name, spec.features, label, spec.context_len, spec.query_len,
                             hf_bf16_rel=hf_bf16_rel)
                try:
                    ours_tok, ours_logits, dt = run_starattn(
                        exe, d, context, query, args.max_tokens, args.device, d / "logits.f32", vocab,
                        args.starattn_arg)
                    compare(ours_tok, ours_logits, hf_tok, hf_logits, tol, args.tie_eps, res)
                    print(f"  {spec.name} [{label}]: steps {res.steps}, max rel err {res.max_rel:.2e}, "
                          f"tokens {res.identical}, {'PASS' if res.passed else 'FAIL'} ({dt:.1f} s)"
                          + (f"  -- {res.note}" if res.note else ""))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    res.note = str(e).splitlines()[0][:300]
                    print(f"  {spec.name} [{label}]: FAIL: {e}")
                results.append(res)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    md = markdown(results, args, exe)
    print()
    print(md)
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(md)
    n_pass = sum(r.passed for r in results)
    print(f"{n_pass} passed, {len(results) - n_pass} failed")
    return 0 if results and n_pass == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
