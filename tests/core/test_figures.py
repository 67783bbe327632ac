"""The figure registry covers every summary key the verbs write, and compare reads figures with their uncertainty."""

from __future__ import annotations

import re
from types import SimpleNamespace

from slm.record import write_record
from slm.report.compare import compare
from slm.report.figures import is_companion, lookup


def _profile_summary() -> dict:
    from slm.profiling.run import summary

    row = {"tok_s": 100.0, "tok_s_std": 2.0, "reps": 5, "disturbed": False, "roofline_fraction": 0.5,
           "j_per_token": 0.02, "tok_per_j": 50.0}
    sweep_row = {"size_bytes": 10, "bits_per_weight": 8.5, "pp_tok_s": 9.0, "tg_tok_s": 3.0, "ppl": 5.0,
                 "kld_vs_ref": 0.0, "pp_tok_s_std": 0.1, "pp_tok_s_reps": 3, "tg_tok_s_std": 0.1, "tg_tok_s_reps": 3}
    res = {"how": "measured on this host", "model": {"params": 10}, "threads": 2,
           "host": {"bandwidth_Bps": 1e10, "flops": 1e11},
           "backends": {b: {"rows": [{**row, "test": "pp512"}, {**row, "test": "tg128@d0"}], "peak_rss": 2**20}
                        for b in ("llama.cpp", "torch", "onnxruntime-genai")},
           "kv": {"analytic": {"f16": {"kv_bytes_per_token": 9, "crossover_context": 8, "rows": [{"kv_share": 0.1}]}}},
           "sweep": {"scoring": {"mode": "second_half"}, "rows": [{**sweep_row, "type": t} for t in ("q8_0", "q4_k_m")]},
           "projection": {"device": {"key": "jetson-orin-nx-16gb"}, "flagged": [], "expected_error": 0.2,
                          "rows": [{"test": "pp512", "tok_s": 9.0}, {"test": "tg128@d0", "tok_s": None}]}}
    return summary(res)


def _export_summary() -> dict:
    from slm.quant.export import summarize

    q = {"max_rel_err": 0.1, "top1_agree": 0.9, "perplexity": 9.0, "kld": {"kld_mean": 0.01}}
    files = [{"format": "gguf", "type": "q6_k", "size_bytes": 1e6, "bits_per_weight": 8.5, "fallbacks": [1]},
             {"format": "onnx", "type": "int4", "size_bytes": 1e6, "bits_per_weight": 5.0, "fallbacks": []}]
    return summarize({"name": "m", "arch": "llama", "params": 10, "files": files, "timings_s": {"total": 1.0},
                      "validation": {"hf": {"perplexity": 8.0, "mode": "all"}, "failed": {},
                                     "tokenizer": {"matching": 5, "strings": 5}, "gguf": {"q6_k": q}, "onnx": {"int4": q}}})


def _train_summary() -> dict:
    from slm.train.loop import _summary

    dist = SimpleNamespace(device=SimpleNamespace(type="cpu"), world=1)
    steps = [{"step": 1, "loss": 2.0, "tok_s": 3.0, "mfu": 0.1}, {"step": 2, "loss": 1.5, "tok_s": 3.0, "mfu": 0.1}]
    evals = [{"eval": {"code": {"ppl": 3.0}}}, {"eval": {"code": {"ppl": 2.5}}}]
    return _summary(dist, SimpleNamespace(flops_per_token=1.0, peak_flops=1.0), SimpleNamespace(n_trainable=5), steps, evals)


# summaries built inline where no builder can be called on its own (the lines they come from)
LISTED = {
    "eval (train/evaluate.py write_eval)": ["smollm2-x36 code ppl", "OP", "BWT"],
    "merge (slm/surgery/merge.py)": ["method", "tensors", "layers", "untouched layers"],
    "data (train/data.py)": ["code train_tokens", "code heldout_tokens"],
    "surgery report (slm/surgery/report.py)": ["bytes written", "parity: max |Δ logits| (fp32)", "parity: bit-identical",
                                               "target", "inputs"],
    "demo compare (slm/cli/demo.py)": ["runs"],
}


def test_every_summary_key_has_a_registry_entry(tiny, tmp_path):
    from slm.info import write_info
    from slm.surgery.expand import ExpandArgs, expand

    base = tiny()
    keys = {"profile": _profile_summary(), "export": _export_summary(), "train": _train_summary(),
            "info": write_info(base, tmp_path / "info")["result"]["summary"],
            "expand": expand(base, tmp_path / "x8", ExpandArgs(groups=2, copies=1))["summary"]}
    keys |= {k: dict.fromkeys(v) for k, v in LISTED.items()}
    unknown = [(kind, k) for kind, s in keys.items() for k in s if not is_companion(k) and lookup(k).fig is None]
    assert unknown == []
    assert "llama.cpp.tg128@d0.tok_s.std" in keys["profile"] and is_companion("llama.cpp.tg128@d0.tok_s.n")
    for k in ("schema_version", "threads", "how", "device", "quant.ppl_scoring", "ppl_scoring", "ranks"):
        assert lookup(k).setting, k
    assert lookup("llama.cpp.tg128@d0.tok_s").label == "decode at depth 0 (llama.cpp, 128 tokens)"
    assert lookup("gguf_q6_k_fallbacks").label == "GGUF q6_k: tensors that fell back to another type"
    assert lookup("onnx_int4_max_rel_err").exact and not lookup("quant.q8_0.tg_tok_s").exact
    assert lookup("a_new_key.x").label == "a new key x"  # unknown: humanised, never raw
    e = lookup("llama.cpp.tg128@d0.j_per_token")
    assert (e.label, e.unit, e.better, e.group) == ("decode at depth 0: energy per token (llama.cpp)", "J/token", "lower",
                                                    "energy")
    assert lookup("torch.pp512.tok_per_j").better == "higher" and "llama.cpp.pp512.j_per_token" in keys["profile"]


def _profile_run(tmp_path, name, decode, prefill, std=2.0, n=10, disturbed=False):
    d = tmp_path / name
    d.mkdir()
    s = {"schema_version": 2, "threads": 2, "how": "measured on this host", "kv_bytes_per_token_f16": 46080}
    for k, v in (("llama.cpp.tg128@d0.tok_s", decode), ("llama.cpp.pp512.tok_s", prefill)):
        s |= {k: v, f"{k}.std": std, f"{k}.n": n, f"{k}.disturbed": disturbed}
    write_record(d, "profile", {}, result={"summary": s})
    return d


def test_compare_with_itself_says_no_significant_difference(tmp_path):
    a = _profile_run(tmp_path, "a", 141.2, 900.0)
    out = compare([a, a], tmp_path / "self.html").read_text()
    assert "B: a vs A: a: no significant difference." in out and "significant</td>" not in out
    assert "Settings (how the runs were made" in out and "result schema version" in out
    assert "schema_version" not in out and "llama.cpp.tg128" not in out  # labels, never raw keys


def test_compare_words_changes_with_their_uncertainty(tmp_path):
    base = _profile_run(tmp_path, "base", 141.2, 900.0)
    x36 = _profile_run(tmp_path, "x36-cpt", 125.1, 905.0)
    out = compare([base, x36], tmp_path / "cmp.html").read_text()
    # −11.4 %; interval of each mean t(9)·2/√10 = 1.43; relative change ± 0.886·√((1.43/141.2)² + (1.43/125.1)²)
    lead = re.search(r'<p class="lead">(.*?)</p>', out).group(1)
    assert lead.startswith("B: x36-cpt vs A: base: decode at depth 0 (llama.cpp, 128 tokens) -11.4% ± 1.4%"), lead
    assert "within noise: prefill of 512 tokens (llama.cpp)" in lead  # +0.6 %: intervals overlap
    assert "141.2 ± 1.431" in out and "<h2>Speed</h2>" in out and "<h2>Memory</h2>" in out
    busy = _profile_run(tmp_path, "busy", 60.0, 900.0, disturbed=True)
    out = compare([base, busy], tmp_path / "busy.html").read_text()
    assert "not judged (measured under interference): decode at depth 0" in out and "60 ± 1.431 †" in out
    old = tmp_path / "old"
    old.mkdir()
    write_record(old, "profile", {}, result={"summary": {"llama.cpp.tg128@d0.tok_s": 100.0}})  # schema 1: no spread
    out = compare([base, old], tmp_path / "old.html").read_text()
    assert "100 (no interval)" in out and "no interval</td>" in out
