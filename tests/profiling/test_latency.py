"""TTFT and inter-token latency: the stream each backend gives an app, its percentiles, and the projection's
formula checked against the measurement."""

from __future__ import annotations

import numpy as np
import pytest

from slm.errors import SlmError
from slm.profiling.latency import latency_figures, measure_latency, percentiles, projected_ttft_s
from slm.profiling.protocol import BenchArgs


def test_percentiles_and_summary_of_known_streams():
    # a fixed stream: TTFT 100 ms, then 9 gaps of 10 ms and one stutter of 50 ms
    stream = [0.1] + [0.01] * 9 + [0.05]
    lat = measure_latency(lambda p, n: stream[:n], 32, len(stream), BenchArgs(reps=3, max_reps=3, warmup=0))
    assert lat["reps"] == 3 and lat["itl_n"] == 30 and lat["prompt"] == 32
    assert lat["ttft_ms"] == pytest.approx(100) and lat["ttft_ms_std"] == pytest.approx(0, abs=1e-9)
    assert lat["itl_ms"]["p50"] == pytest.approx(10)
    assert lat["itl_ms"]["p99"] == pytest.approx(np.percentile([10] * 27 + [50] * 3, 99))
    assert lat["itl_ms"]["p99"] > lat["itl_ms"]["p90"] >= lat["itl_ms"]["p50"]  # the stutter is in the tail
    assert percentiles([1.0, 2.0, 3.0]) == {"p50": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98)}


def test_projected_ttft_is_prompt_at_prefill_rate_plus_one_decode_step():
    assert projected_ttft_s(512, 1024.0, 50.0) == pytest.approx(0.5 + 0.02)
    with pytest.raises(ValueError):
        projected_ttft_s(0, 100.0, 10.0)


def test_latency_prompt_defaults_to_a_measured_prefill_and_is_validated():
    assert BenchArgs().latency_prompt == 512 and BenchArgs(pp=(64, 256)).latency_prompt == 256
    assert BenchArgs(pp=(1024, 2048)).latency_prompt == 1024  # none ≤ 512: the shortest
    assert BenchArgs(pp=(128,), tg=16, depths=(0,), latency_prompt=600).context_needed() == 664
    with pytest.raises(SlmError, match="latency-tokens"):
        BenchArgs(latency_tokens=1)


def test_llamacpp_stream_on_a_tiny_gguf(tiny, tmp_path):
    from slm.quant.gguf_write import write_gguf
    from slm.quant.llamacpp import LlamaCpp

    with LlamaCpp(write_gguf(tiny(), tmp_path / "t.gguf", "f32"), 128, 1) as b:
        s = b.stream(32, 8)
        lat = measure_latency(b.stream, 32, 8, BenchArgs(pp=(32,), tg=8, depths=(0,), reps=2, threads=1))
        rows = {"pp32": {"test": "pp32", "tok_s": 32 / (lat["ttft_ms"] / 1e3)},
                "tg8@d0": {"test": "tg8@d0", "tok_s": 1e3 / lat["itl_ms"]["p50"]}}
    assert len(s) == 8 and all(x > 0 for x in s)
    figs = {f.name: f for f in latency_figures("llama.cpp", lat, "measured here", 1, rows["pp32"],
                                               rows["tg8@d0"])}
    assert figs["llama.cpp.ttft"].unit == "ms" and figs["llama.cpp.ttft"].interval is not None
    assert figs["llama.cpp.ttft"].group == "latency" and figs["llama.cpp.ttft"].better == "lower"
    assert {"llama.cpp.itl_p50", "llama.cpp.itl_p90", "llama.cpp.itl_p99"} <= set(figs)
    # the formula on rates built from this very stream gives its TTFT back plus one median step
    assert figs["llama.cpp.ttft_from_throughput"].value == pytest.approx(
        lat["ttft_ms"] + lat["itl_ms"]["p50"], rel=1e-3)


def test_llamacpp_memory_is_the_models_not_the_process(tiny, tmp_path):
    from slm.figure import by_name
    from slm.profiling.memory import llamacpp_memory, memory_figures
    from slm.quant.gguf_write import write_gguf
    from slm.quant.llamacpp import LlamaCpp
    from slm.spec import spec_from_gguf

    g = write_gguf(tiny(), tmp_path / "t.gguf", "f32")
    with LlamaCpp(g, 256, 1) as b:
        logged = b.memory()
    m = llamacpp_memory(g, spec_from_gguf(g), 256, 1, logged)
    assert m["logged"]["weights"] == logged["weights"] > 0 and m["logged"]["kv_cache"] > 0
    # the plan's formula lands near what llama.cpp logs for the same shape and context
    lt, pt = sum(m["logged"].values()), sum(m["planned"].values())
    assert abs(pt - lt) / lt < 0.1, (m["logged"], m["planned"])
    r = m["resident"]  # a bare child: its RSS over its own baseline, far below a torch process's
    assert r["peak_rss"] >= r["loaded_rss"] > r["baseline_rss"] > 0 and 0 < r["over_baseline"] < 2**30
    figs = by_name(memory_figures(m, "measured here"))
    assert figs["llama.cpp.memory_logged"].value == int(lt)
    assert figs["llama.cpp.memory_planned"].how == "analytic"
    assert figs["llama.cpp.memory_resident"].value == r["over_baseline"]
