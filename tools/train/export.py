"""Saves the model as a Hugging Face Llama directory (config.json, bf16 safetensors shards
model-0000i-of-0000N.safetensors, model.safetensors.index.json; no tokenizer files, which
starattn reads as its byte-level vocabulary) and checks that transformers loads it to the same
logits."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file


def hf_state_dict(model) -> dict:
    """bf16 tensors under Hugging Face names; a tied lm_head is left out (tie_word_embeddings)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.shape.tie_word_embeddings:
            continue
        out[name] = t.detach().to("cpu", torch.bfloat16).contiguous()
    return out


def save_model(model, outdir: str, shard_bytes: int = 12 << 20) -> list:
    """Writes the directory; every shard holds at most shard_bytes of tensor data (one tensor
    larger than that gets a shard of its own). Returns the shard file names."""
    os.makedirs(outdir, exist_ok=True)
    tensors = hf_state_dict(model)
    shards, current, size = [], {}, 0
    for name in sorted(tensors, key=_order):
        n = tensors[name].numel() * tensors[name].element_size()
        if current and size + n > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensors[name]
        size += n
    if current:
        shards.append(current)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    total = 0
    for fname, shard in zip(names, shards):
        save_file(shard, os.path.join(outdir, fname), metadata={"format": "pt"})
        os.chmod(os.path.join(outdir, fname), 0o644)
        for k, t in shard.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(model.shape.hf_config(), f, indent=2)
        f.write("\n")
    return names


def _order(name: str):
    # embeddings, layers in numeric order, final norm, head
    parts = name.split(".")
    if parts[:2] == ["model", "layers"]:
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)


@torch.no_grad()
def check_with_transformers(model, outdir: str, ids: list) -> dict:
    """Loads outdir with transformers' LlamaForCausalLM (float32) and compares its logits on ids
    with the training model's, whose weights are rounded to bf16 as saved. Returns the max
    relative error (max |diff| / max |logit|), or a note when transformers is not installed."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as e:  # the CPU test venv may lack it
        return {"checked": False, "note": f"transformers not importable: {e}"}
    import copy
    hf = LlamaForCausalLM.from_pretrained(outdir, dtype=torch.float32,
                                          attn_implementation="eager").eval()
    ref = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for p in ref.parameters():
        p.copy_(p.to(torch.bfloat16).float())
    x = torch.tensor([ids], dtype=torch.long)
    want = ref(x).float()
    got = hf(input_ids=x).logits.float()
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    return {"checked": True, "tokens": len(ids), "max_rel_error": err, "argmax_agreement": agree,
            "ok": err < 1e-3}


@torch.no_grad()
def check_with_starattn(model, outdir: str, binary: str, ids: list, query: int = 16) -> dict:
    """Runs `starattn run --mode full` (cpu) on ids (the last `query` as the query) for one token
    and compares its logits with the training model's (weights rounded to bf16, float32)."""
    import copy
    import subprocess
    import tempfile
    import numpy as np
    ctx, qry = ids[:-query], ids[-query:]
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "logits.f32")
        cmd = [binary, "run", "--model", outdir, "--mode", "full", "--engine", "--device", "cpu",
               "--context-ids", ",".join(map(str, ctx)), "--query-ids", ",".join(map(str, qry)),
               "--max-tokens", "1", "--ignore-eos", "--output", "ids", "--dump-logits", dump]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return {"checked": False, "note": f"starattn run failed: {r.stderr.strip()[-400:]}"}
        got = torch.from_numpy(np.fromfile(dump, dtype=np.float32)[:model.shape.vocab_size].copy())
    ref = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for p in ref.parameters():
        p.copy_(p.to(torch.bfloat16).float())
    want = ref(torch.tensor([ids], dtype=torch.long))[0, -1].float()
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
    return {"checked": True, "tokens": len(ids), "max_rel_error": err,
            "same_argmax": bool(got.argmax() == want.argmax()), "ok": err < 1e-3}
