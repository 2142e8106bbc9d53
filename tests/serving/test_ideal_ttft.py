"""tools/bench/ideal_ttft.py: the per-host FLOPs of phase 1 counted by hand on a small shape, the
kernel rates parsed from `starattn bench kernels` output, and the relations the model must keep."""
import importlib.util
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("ideal_ttft", os.path.join(ROOT, "tools", "bench", "ideal_ttft.py"))
ideal_ttft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ideal_ttft)

TINY = {"hidden_size": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 2,
        "intermediate_size": 8, "num_hidden_layers": 2}
KERNELS = """prefill attention (Hq 32, Hkv 8, D 128)         ours ms    TFLOP/s  torch flash  torch cudnn    ratio
causal+prefix S=4096 (keys 8192)                  0.755      546.2        271.8        214.3    2.01x
causal S=4096                                     0.284      484.3        233.6        411.5    1.18x
causal+prefix S=16384 (keys 32768)               12.994      507.7        346.4        215.5    1.47x
GEMM x[M,K] w[N,K]^T bf16 (M=1: GB/s)           ours ms       ours     torch ms        torch    ratio
gemm M=1 N=6144 K=4096                           0.0145     3479.8       0.0489       1030.0    3.38x
gemm M=4096 N=6144 K=4096                        0.2560      805.4       0.3352        615.1    1.31x
gemm M=4096 N=4096 K=4096                        0.1712      802.6       0.2195        626.2    1.28x
"""


class IdealTtftTest(unittest.TestCase):
    def test_flops_counted_by_hand(self):
        s = ideal_ttft.shape(TINY)
        # One full layer: 2 * (4 * (4 + 4) + 4 * 4 + 3 * 4 * 8) = 288; the last: q|k|v only, 64.
        self.assertEqual(ideal_ttft.linear_per_row(s), 288 + 64)
        hosts = ideal_ttft.hosts(s, 10, 2, "star", 0)
        self.assertEqual([h["rows"] for h in hosts], [5, 10])  # block 0; anchor 5 + block 5
        # Block 0: 15 causal pairs. Block 1: anchor causal 15, then 5 rows over 5 + causal 15.
        self.assertEqual([h["pairs"] for h in hosts], [15, 15 + 25 + 15])
        # 4 * Hq * D per pair on the one layer with attention (the last keeps K/V only).
        self.assertEqual(hosts[1]["attention_flops"], 55 * 4 * 2 * 2)
        self.assertEqual(hosts[1]["linear_flops"], 10 * 352)
        short_anchor = ideal_ttft.hosts(s, 10, 2, "star", 2)
        self.assertEqual(short_anchor[1]["pairs"], 3 + 5 * 2 + 15)

    def test_star_on_one_gpu_is_full_attention(self):
        a = ideal_ttft.ideal(TINY, 1000, 1, "star", 0, 800.0, 500.0)
        b = ideal_ttft.ideal(TINY, 1000, 1, "full", 0, 800.0, 500.0)
        self.assertAlmostEqual(a["ideal_phase1_ms"], b["ideal_phase1_ms"], places=12)

    def test_more_gpus_less_time_the_slowest_host_counts(self):
        config = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "intermediate_size": 14336, "num_hidden_layers": 32}
        times = [ideal_ttft.ideal(config, 131072, n, "star", 4096, 800.0, 500.0)["ideal_phase1_ms"]
                 for n in (1, 2, 4, 8)]
        self.assertEqual(times, sorted(times, reverse=True))
        r = ideal_ttft.ideal(config, 131072, 4, "star", 0, 800.0, 500.0)
        self.assertEqual(r["ideal_phase1_ms"], max(h["ms"] for h in r["hosts"]))
        self.assertLess(r["hosts"][0]["ms"], r["hosts"][1]["ms"], "block 0 has no anchor in front")

    def test_rates_from_the_kernels_bench(self):
        gemm, attn = ideal_ttft.rates_from_kernels(KERNELS)
        self.assertAlmostEqual(gemm, (805.4 + 802.6) / 2)  # the M=1 row is bandwidth, not counted
        self.assertAlmostEqual(attn, (546.2 + 507.7) / 2)  # causal+prefix rows only
        with self.assertRaises(ValueError):
            ideal_ttft.rates_from_kernels("nothing here")

    def test_command_line(self):
        import io
        import json
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(TINY, f)
        out = io.StringIO()
        old = sys.stdout
        sys.stdout = out
        try:
            rc = ideal_ttft.main(["--config", f.name, "--context", "10", "--gpus", "2",
                                  "--gemm-tflops", "1", "--attn-tflops", "1", "--json"])
        finally:
            sys.stdout = old
            os.unlink(f.name)
        self.assertEqual(rc, 0)
        r = json.loads(out.getvalue())
        self.assertAlmostEqual(r["ideal_phase1_ms"], (10 * 352 + 55 * 16) / 1e12 * 1e3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
