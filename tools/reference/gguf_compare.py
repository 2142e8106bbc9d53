#!/usr/bin/env python3
"""Compares starattn's full mode on a GGUF model with two independent implementations.

* Hugging Face transformers loading the same GGUF (it dequantizes on load, so the weights are the
  very same floats): logits of every generated token within --tol relative (max |ours - hf| /
  max |hf|), identical greedy tokens.
* llama.cpp through llama-cpp-python: greedy tokens only. llama.cpp multiplies with the quantized
  weights and quantizes activations (Q8 dot products), so its logits differ slightly from a float
  dequantized model; we report where its greedy path parts from ours.

All three see the same token ids (from transformers' GGUF tokenizer), so tokenization is not part
of the comparison. Prints a markdown table; exits 0 iff every transformers check passes.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

PROMPTS = [
    ("The ferry to the island leaves at seven in the morning. The lighthouse keeper is Marguerite.",
     "When does the ferry leave?"),
    ("Photosynthesis converts light energy into chemical energy stored in glucose.",
     "What does photosynthesis produce?"),
    ("def add(a, b):\n    return a + b\n\nprint(add(2, 3))", "What does this program print?"),
    ("Paris is the capital of France. Berlin is the capital of Germany.",
     "What is the capital of Germany?"),
    ("Le chat dort sur le canapé pendant que la pluie tombe.", "Where is the cat sleeping?"),
]


def default_gguf():
    models = os.environ.get("STARATTN_MODELS") or os.path.join(
        os.path.expanduser("~"), ".cache", "starattn", "models")
    return os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf")


def chatml(document, question):
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    context = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{document}"
    query = f"\n\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return context, query


def run_starattn(binary, gguf, context_ids, query_ids, max_tokens, device, workdir):
    dump = os.path.join(workdir, "logits.bin")
    cmd = [binary, "run", "--model", gguf, "--mode", "full", "--output", "ids", "--ignore-eos",
           "--context-ids", ",".join(map(str, context_ids)),
           "--query-ids", ",".join(map(str, query_ids)),
           "--max-tokens", str(max_tokens), "--device", device, "--dump-logits", dump]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    ids = [int(t) for t in out.stdout.split()]
    logits = np.fromfile(dump, dtype="<f4").reshape(len(ids), -1)
    return ids, logits


def hf_greedy(model, torch, ids, steps):
    seq = list(ids)
    tokens, rows = [], []
    with torch.no_grad():
        for _ in range(steps):
            out = model(torch.tensor([seq])).logits[0, -1].float().numpy()
            rows.append(out)
            tok = int(np.argmax(out))
            tokens.append(tok)
            seq.append(tok)
    return tokens, rows


def llama_cpp_greedy(llm, ids, steps):
    llm.reset()
    llm.eval(ids)
    tokens = []
    for _ in range(steps):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(tok)
        llm.eval([tok])
    return tokens


def first_divergence(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starattn", default=shutil.which("starattn") or "build/tools/starattn")
    ap.add_argument("--gguf", default=default_gguf())
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--out-md")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers

    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    llm = None
    if not args.no_llama_cpp:
        try:
            import llama_cpp
            llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=1024, logits_all=True,
                                  verbose=False, n_threads=os.cpu_count())
            llama_version = llama_cpp.__version__
        except ImportError:
            print("llama-cpp-python not installed: skipping the llama.cpp column", file=sys.stderr)

    rows, ok = [], True
    with tempfile.TemporaryDirectory() as work:
        for i, (document, question) in enumerate(PROMPTS):
            c_text, q_text = chatml(document, question)
            c_ids = tok(c_text, add_special_tokens=False)["input_ids"]
            q_ids = tok(q_text, add_special_tokens=False)["input_ids"]
            ours, our_logits = run_starattn(args.starattn, args.gguf, c_ids, q_ids,
                                            args.max_tokens, args.device, work)
            hf_tokens, hf_rows = hf_greedy(model, torch, c_ids + q_ids, args.max_tokens)
            agree = first_divergence(ours, hf_tokens)
            steps = len(ours) if agree is None else agree + 1
            err = max(float(np.max(np.abs(our_logits[s] - hf_rows[s])) /
                            np.max(np.abs(hf_rows[s]))) for s in range(steps))
            passed = agree is None and err <= args.tol
            ok &= passed
            lc = "-"
            if llm is not None:
                lc_tokens = llama_cpp_greedy(llm, c_ids + q_ids, args.max_tokens)
                div = first_divergence(ours, lc_tokens)
                lc = "identical" if div is None else f"parts at token {div}"
            text = tok.decode(ours).replace("\n", " ").replace("|", "/")
            rows.append(f"| {i} | {len(c_ids)} / {len(q_ids)} | {err:.2e} | "
                        f"{'yes' if agree is None else f'no (token {agree})'} | {lc} | "
                        f"{'PASS' if passed else 'FAIL'} | {text[:60]} |")

    lines = [
        f"GGUF: `{os.path.basename(args.gguf)}`; transformers {transformers.__version__}, "
        f"torch {torch.__version__}" +
        (f", llama-cpp-python {llama_version}" if llm is not None else "") +
        f"; starattn --device {args.device}; {args.max_tokens} greedy tokens per prompt.",
        "",
        "| prompt | context / query ids | max rel logit error vs HF | tokens identical to HF | "
        "llama.cpp greedy vs ours | pass | our answer |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"{sum('PASS' in r for r in rows)} passed, {sum('FAIL' in r for r in rows)} failed",
    ]
    print("\n".join(lines))
    if args.out_md:
        with open(args.out_md, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
