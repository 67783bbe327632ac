"""The profile end to end: backends on one protocol, the sweep with its answer, JSON schema, slm.json,
report."""

from __future__ import annotations

import json

import pytest

from slm.cli import main
from slm.profiling.protocol import BenchArgs, run_tests


def test_torch_backend_on_tiny(tiny):
    from slm.profiling.torch_backend import Torch

    args = BenchArgs(pp=(8, 32), tg=4, depths=(0, 16), reps=2, threads=1)
    with Torch(tiny(), threads=1) as b:
        rows = run_tests(b, args)
        assert b._caches[16].get_seq_length() == 16  # the depth cache is cropped back after every run
    assert [r["test"] for r in rows] == ["pp8", "pp32", "tg4@d0", "tg4@d16"]
    for r in rows:
        assert (r["tok_s"] > 0 and 2 <= len(r["samples_tok_s"]) == r["reps"] <= args.max_reps
                and r["tok_s_std"] >= 0)
        assert (r["stop"] in ("interval", "time_cap", "max_reps")
                and (r["stop"] == "interval") == (r["ci_rel"] <= 0.03))
    assert all(r["prefill_ms"] > 0 for r in rows if r["kind"] == "prefill")


def test_bench_args_validation():
    from slm.errors import SlmError

    with pytest.raises(SlmError):
        BenchArgs(pp=(0,))
    with pytest.raises(SlmError):
        BenchArgs(reps=0)
    assert BenchArgs(pp=(128,), tg=64, depths=(0, 512)).max_context() == 576


@pytest.mark.slow
def test_profile_gguf_with_sweep(gguf, tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["profile", str(gguf), "--quick", "--quant", "q8_0,q4_0", "--device", "jetson", "--json", "-o",
               str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["schema_version"] == 3 and res["threads"] >= 1 and res["where"] == "measured here"
    rows = res["backends"]["llama.cpp"]["rows"]
    assert [r["test"] for r in rows] == ["pp64", "pp256", "tg32@d0", "tg32@d256"]
    for r in rows:
        assert r["tok_s"] > 0 and 0 < r["roofline_fraction"] < 1.5 and r["how"] == "measured on this host"
    assert res["backends"]["llama.cpp"]["peak_rss"] > res["backends"]["llama.cpp"]["memory"]["weights"] / 2
    # the sweep: reference first, real file contents, KLD ≥ 0 and larger for fewer bits
    sw = res["sweep"]["rows"]
    assert [r["type"] for r in sw] == ["q8_0", "q4_0"] and sw[0]["kld_vs_ref"] == 0
    assert sw[1]["kld_vs_ref"] > 0 and sw[1]["size_bytes"] < sw[0]["size_bytes"]
    assert "Q8_0" in sw[0]["tensor_types"] and sw[1]["bits_per_weight"] < sw[0]["bits_per_weight"]
    assert "decode:" in res["sweep"]["answer"] and "prefill:" in res["sweep"]["answer"]
    # KV-cache quality on the sweep's reference weights: each cache type against f16, same tokens
    kq = res["sweep"]["kv_quality"]
    assert [r["kv_type"] for r in kq["rows"]] == ["f16", "q8_0", "q4_0"] and kq["weights"] == "q8_0"
    assert 0 < kq["rows"][1]["kld"] < kq["rows"][2]["kld"] and kq["rows"][1]["context"] == 512
    # KV share: measured allocation beside analytic, the crossover within the 8k context
    assert {r["cache_type"] for r in res["kv"]["measured"]} == {"f16", "q8_0", "q4_0"}
    assert all(abs(r["kv_rel_err"]) <= 0.02 for r in res["kv"]["measured"])
    f16 = res["kv"]["analytic"]["f16"]
    assert f16["crossover_within_max"] and 512 < f16["crossover_context"] < 8192
    # projection onto Orin NX 16GB: labelled, with inputs, nothing flagged for a 135M model
    p = res["projection"]
    assert (p["device"]["key"] == "jetson-orin-nx-16gb" and p["flagged"] == []
            and p["inputs"]["device_bandwidth_GBps"] == 102.4)
    # outputs: the figures compare and the index read, the report with its charts
    rec = json.loads((out / "slm.json").read_text())
    figs = {f["name"]: f for f in rec["result"]["figures"]}
    d0 = figs["llama.cpp.tg32@d0"]
    assert rec["kind"] == "profile" and d0["value"] > 0 and d0["unit"] == "tok/s" and d0["key"]
    assert d0["interval"] is not None and d0["n"] >= 2 and d0["how"] == "measured here"
    assert figs["projected.tg32@d0"]["how"] == "projected" and figs["projected.tg32@d0"]["expected_error"]
    assert "process" in figs["llama.cpp.process_rss"]["label"]  # the process, not the model
    assert all(f["unit"] and f["better"] in ("higher", "lower", "none") for f in figs.values())
    html = (out / "index.html").read_text()
    for title in ("prefill speed vs prompt length", "decode speed vs depth", "KV-cache share",
                  "quantization:", "roofline"):
        assert title in html
    # the conditions line counts the sweep's timings too, so it agrees with the sweep's own answer
    n_sweep = 2 * len(sw)
    assert (f"the quantization sweep&#39;s {n_sweep} timings quiet too" in html
            or f"of {n_sweep} under interference" in html)


def _tiny_onnx(tiny, tmp_path):
    """A tiny checkpoint with a word-level tokenizer, built into an fp32 ONNX folder by onnxruntime-genai's
    builder."""
    import subprocess
    import sys

    import onnxruntime_genai  # noqa: F401  (a test dependency: missing, this test must fail, not skip)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    m = tiny()
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(256)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", bos_token="t1",
                            eos_token="t2").save_pretrained(m)
    out = tmp_path / "onnx"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(m), "-o", str(out),
                    "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache")], check=True,
                   capture_output=True)
    return out


def test_onnxruntime_genai_backend_on_tiny(tiny, tmp_path, capsys):
    onnx = _tiny_onnx(tiny, tmp_path)
    out = tmp_path / "p"
    rc = main(["profile", str(onnx), "--pp", "16,64", "--tg", "8", "--depths", "0,32", "--reps", "2",
               "--threads", "1", "--json", "-o", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    rows = res["backends"]["onnxruntime-genai"]["rows"]
    assert [r["test"] for r in rows] == ["pp16", "pp64", "tg8@d0", "tg8@d32"]
    assert all(r["tok_s"] > 0 and len(r["samples_tok_s"]) == r["reps"] >= 2 for r in rows)
    assert res["backends"]["onnxruntime-genai"]["memory"]["weights"] > 0
    assert set(res["backends"]) == {"onnxruntime-genai"} and (out / "index.html").is_file()


def test_sweep_answer_reads_the_data():
    from slm.profiling.sweep import answer

    def row(t, bpw, pp, tg):
        return {"type": t, "bits_per_weight": bpw, "pp_tok_s": pp, "pp_tok_s_std": 1.0, "tg_tok_s": tg,
                "tg_tok_s_std": 0.5}

    rows = [row("f16", 16, 100, 20), row("q8_0", 8.5, 150, 40), row("q6_k", 6.6, 160, 30),
            row("q4_0", 4.5, 170, 50)]
    a = answer(rows)
    assert (a.startswith("decode: no")
            and "q6_k (6.60 bpw) 30.0 ± 1.0 tok/s vs q8_0 (8.50 bpw) 40.0 ± 1.0 tok/s" in a)
    assert "prefill: yes" in a and "fastest decode: q4_0" in a
    rows[2]["tg_tok_s"] = 45
    assert answer(rows).startswith("decode: yes")


def test_profile_args_parse_quant_once_and_presets():
    from pathlib import Path

    from slm.errors import SlmError
    from slm.profiling.api import ProfileArgs, RemoteArgs, remote_argv

    a = ProfileArgs(quant="Q8_0, q4_k_m,q8_0", backends="llama.cpp", threads=3, device="jetson")
    assert (a.quant == ("q8_0", "q4_k_m") and a.backends == ("llama.cpp",)
            and a.bench.threads == a.threads == 3)
    assert a.device == "jetson-orin-nx-16gb" and a.bench.pp == (128, 512, 2048)
    q = ProfileArgs(quant=("q4_0",), quick=True, threads=1)
    assert (q.bench.pp, q.bench.tg, q.bench.depths, q.bench.reps,
            q.bench.threads) == ((64, 256), 32, (0, 256), 2, 1)
    assert (q.sweep_pp, q.sweep_tg, q.ppl_chunks, q.kv_contexts) == (128, 16, 2, (512, 2048))
    assert ProfileArgs(bench=BenchArgs(threads=5)).threads == 5  # None: the protocol's own
    for bad, msg in (({"quant": "q9_z"}, "unknown GGUF type 'q9_z'"),
                     ({"backends": "llama.cpp,vllm"}, "unknown backend"),
                     ({"kv_types": ("q5_1",)}, "unknown KV cache type"), ({"device": "nano"}, "nano")):
        with pytest.raises(SlmError, match=msg):
            ProfileArgs(**bad)
    argv = remote_argv(q, Path("/x/m.gguf"), RemoteArgs("me@jetson", remote_dir="rd"))
    assert argv[0] == "--args-json" and argv[2:] == ["-o", "rd/m.gguf.profile", "--force"]
    assert ProfileArgs.from_dict(json.loads(argv[1])) == q  # the record itself, not a rebuilt command line


def test_profile_model_projects_a_config(tmp_path):
    """The library call `slm demo` makes, on a bare config: projection only, the report and slm.json
    written."""
    from slm.profiling.api import ProfileArgs, profile_model

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(model_type="llama", num_hidden_layers=2, hidden_size=64,
                                   intermediate_size=128, num_attention_heads=4, vocab_size=256)))
    seen = []
    res = profile_model(None, tmp_path / "p", ProfileArgs(device="jetson", quant="q4_k_m"), config=cfg,
                        progress=seen.append)
    assert res["out"] == str(tmp_path / "p") and res["projection"]["how"] == "projected"
    # q4_k_m's nominal bpw
    assert res["projection"]["inputs"]["weight_bytes"] == res["model"]["params"] * 4.5 / 8
    rec = json.loads((tmp_path / "p" / "slm.json").read_text())
    assert rec["args"]["quant"] == ["q4_k_m"] and rec["args"]["config"] == str(cfg)
    assert (tmp_path / "p" / "index.html").is_file()
