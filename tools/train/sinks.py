"""Attention sinks: how much attention probability each layer and head puts on the first token
(and on the first four) of held-out sequences, against the share a uniform causal attention
would give them. Pretrained LLMs put a large share on the first token whatever it is ("attention
sinks", Xiao et al. 2023); Star Attention's anchor block exists because blocks encoded without
the sequence start lack it.

For query position i (0-based) the uniform share of the first token is 1/(i+1) and of the first
four 4/(i+1); both the measured and the uniform masses are averaged over query positions
i >= skip (the first few rows are dominated by the causal mask).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def first_token_mass(model, ids: torch.Tensor, skip: int = 16, chunk: int = 1024) -> dict:
    """ids [1, T]. Returns {"mass0": [layer][head], "mass4": ..., "uniform0", "uniform4"}."""
    s = model.shape
    t = ids.shape[1]
    mass0 = torch.zeros(s.num_hidden_layers, s.num_attention_heads, dtype=torch.float64)
    mass4 = torch.zeros_like(mass0)
    rows = torch.arange(skip, t, device=ids.device)

    def probe(layer, q, k):
        # q, k [1, H, T, D]: softmax rows in float32, chunked over queries to bound memory.
        qf, kf = q[0].float(), k[0].float()
        scale = qf.shape[-1] ** -0.5
        with torch.autocast(ids.device.type, enabled=False):  # float32 scores, not bf16
            _accumulate(layer, qf, kf, scale)

    def _accumulate(layer, qf, kf, scale):
        for start in range(skip, t, chunk):
            stop = min(t, start + chunk)
            scores = torch.einsum("hqd,hkd->hqk", qf[:, start:stop], kf[:, :stop]) * scale
            qpos = torch.arange(start, stop, device=ids.device)[:, None]
            kpos = torch.arange(stop, device=ids.device)[None, :]
            scores.masked_fill_(kpos > qpos, float("-inf"))
            p = scores.softmax(-1)
            mass0[layer] += p[:, :, 0].sum(-1).double().cpu()
            mass4[layer] += p[:, :, :4].sum((-1, -2)).double().cpu()

    model(ids, probe=probe)
    n = len(rows)
    inv = (1.0 / (rows.double() + 1)).mean().item()
    return {"mass0": (mass0 / n).tolist(), "mass4": (mass4 / n).tolist(),
            "uniform0": inv, "uniform4": min(1.0, 4 * inv), "tokens": t, "skip": skip}


def summarize(results: list) -> dict:
    """Averages per-sequence measurements (same model) and says, per layer, the mean and the
    largest head mass on the first token, and how many heads are sinks (>= 10x uniform and
    >= 0.2 of their attention on the first token)."""
    layers = len(results[0]["mass0"])
    heads = len(results[0]["mass0"][0])
    avg = lambda key: [[sum(r[key][l][h] for r in results) / len(results) for h in range(heads)]
                       for l in range(layers)]
    mass0, mass4 = avg("mass0"), avg("mass4")
    uniform0 = sum(r["uniform0"] for r in results) / len(results)
    uniform4 = sum(r["uniform4"] for r in results) / len(results)
    per_layer = []
    sink_heads = 0
    for l in range(layers):
        sinks = [h for h in range(heads) if mass0[l][h] >= max(0.2, 10 * uniform0)]
        sink_heads += len(sinks)
        per_layer.append({"layer": l, "mean_mass0": sum(mass0[l]) / heads,
                          "max_mass0": max(mass0[l]), "mean_mass4": sum(mass4[l]) / heads,
                          "sink_heads": sinks})
    return {"mass0": mass0, "mass4": mass4, "uniform0": uniform0, "uniform4": uniform4,
            "per_layer": per_layer, "sink_heads": sink_heads, "heads": layers * heads,
            "mean_mass0": sum(map(sum, mass0)) / (layers * heads),
            "mean_mass4": sum(map(sum, mass4)) / (layers * heads)}


def measure(model, sequences: dict, device, skip: int = 16) -> dict:
    """sequences: {name: [token lists]}; each group summarized on its own."""
    model.eval()
    out = {"definition": "mean over query positions i >= skip of the softmax probability on key "
                         "0 (mass0) and keys 0-3 (mass4); uniform* is the causal uniform share",
           "skip": skip, "groups": {}}
    for name, seqs in sequences.items():
        if not seqs:
            continue
        res = []
        for seq in seqs:
            ids = torch.tensor([list(seq)], dtype=torch.long, device=device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                enabled=device.type == "cuda"):
                res.append(first_token_mass(model, ids, skip))
        summary = summarize(res)
        summary["sequences"] = len(seqs)
        summary["tokens"] = [len(s) for s in seqs]
        out["groups"][name] = summary
    return out


def report(result: dict) -> str:
    lines = []
    for name, g in result["groups"].items():
        lines.append(f"sinks [{name}] {g['sequences']} seq of {g['tokens'][0]} tokens: first-token "
                     f"mass {g['mean_mass0']:.3f} (uniform {g['uniform0']:.4f}), first-4 "
                     f"{g['mean_mass4']:.3f} (uniform {g['uniform4']:.4f}), sink heads "
                     f"{g['sink_heads']}/{g['heads']}")
        for pl in g["per_layer"]:
            lines.append(f"  layer {pl['layer']}: mean {pl['mean_mass0']:.3f} max "
                         f"{pl['max_mass0']:.3f} first-4 {pl['mean_mass4']:.3f} sinks "
                         f"{pl['sink_heads']}")
    return "\n".join(lines)
