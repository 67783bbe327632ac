"""The figures of a profile: what `slm report compare`, the index and the report's top read from slm.json.

One producer for every profile figure (the measured backends, the KV-cache analysis, the quantization sweep
and the device projection), each carrying its label, unit, interval, direction and how it was obtained.
`res["where"]` says where the measured ones were taken (here, on the device itself, or over SSH).
"""

from __future__ import annotations

from slm.figure import Figure, analytic, from_file, setting, timed
from slm.profiling.latency import latency_figures
from slm.profiling.memory import memory_figures

MEASURED = ("measured here", "measured on the device", "measured over SSH")


def _test_label(name: str, r: dict) -> str:
    if r["kind"] == "prefill":
        return f"prefill of {r['n_tokens']} tokens ({name})"
    return f"decode at depth {r['depth']} ({name}, {r['n_tokens']} tokens)"


def _is_key(name: str, r: dict, bench: dict) -> bool:
    """The main backend's longest prefill and its decode from an empty cache: what the index shows."""
    return name == "llama.cpp" and r["test"] in (f"pp{max(bench['pp'])}", f"tg{bench['tg']}@d0")


def backend_figures(res: dict, how: str) -> list[Figure]:
    out = []
    bench = res["args"]["bench"]
    # the device's own llama-bench (slm.profiling.llamabench) or this protocol on a backend
    method = "the device's llama-bench" if res.get("runner") == "llama-bench" else "llama-bench protocol"
    for name, b in res["backends"].items():
        for r in b["rows"]:
            label, n = _test_label(name, r), f"{name}.{r['test']}"
            out.append(timed(n, label, round(r["tok_s"], 3), r.get("tok_s_std"), r.get("reps"), how=how,
                             disturbed=r.get("disturbed", False), key=_is_key(name, r, bench),
                             source=f"{b['threads']} threads, {method}"))
            if "roofline_fraction" in r:  # not for llama-bench runs: the device's peaks are not measured
                out.append(Figure(f"{n}.roofline", f"{label}: share of this host's roofline",
                                  round(r["roofline_fraction"], 4), "share", "higher", "speed", how,
                                  note="against the host's measured bandwidth / matmul peak"))
            if r.get("j_per_token") is not None:  # only where measured (slm.profiling.energy): never a zero
                out.append(Figure(f"{n}.energy", f"{label}: energy per token", round(r["j_per_token"], 6),
                                  "J/token", "lower", "energy", how, source=r.get("energy_source", "")))
        if b.get("latency"):
            lat = b["latency"]
            rows = {r["test"]: r for r in b["rows"]}
            out += latency_figures(name, lat, how, b["threads"], rows.get(f"pp{lat['prompt']}"),
                                   rows.get(f"tg{b['protocol']['tg']}@d0"))
        if b.get("llama_memory"):
            out += memory_figures(b["llama_memory"], how)
        if b.get("peak_rss"):
            out.append(Figure(f"{name}.process_rss",
                              f"peak resident memory of the profiling process ({name})", b["peak_rss"],
                              "bytes", "lower", "memory", how,
                              note="the whole Python process (interpreter, torch and every loaded library), "
                                   "not the model alone"))
    return out


def kv_figures(res: dict) -> list[Figure]:
    f16 = res["kv"]["analytic"].get("f16")
    if not f16:
        return []
    return [analytic("kv.bytes_per_token", "KV cache per token (f16)", f16["kv_bytes_per_token"], "bytes",
                     "lower", "memory"),
            analytic("kv.crossover", "context where the f16 KV cache outgrows the weights",
                     f16["crossover_context"], "tokens", "higher", "memory"),
            analytic("kv.share_at_max", "KV-cache share of memory at the model's max context (f16)",
                     round(f16["rows"][-1]["kv_share"], 4), "share", "lower", "memory", key=True)]


def sweep_figures(res: dict, how: str) -> list[Figure]:
    sw = res.get("sweep")
    if not sw:
        return []
    what = sw["scoring"].get("what", sw["scoring"]["mode"])
    out = [setting("quant.scoring", "tokens scored for the sweep's perplexity / KLD", what)]
    for r in sw["rows"]:
        t = r["type"]
        out += [from_file(f"quant.{t}.size", f"{t}: file size", r["size_bytes"], "bytes", "lower"),
                from_file(f"quant.{t}.bpw", f"{t}: bits per weight", round(r["bits_per_weight"], 3), "bpw",
                          "lower")]
        for k, what_ in (("pp", "prefill"), ("tg", "decode")):
            out.append(timed(f"quant.{t}.{k}", f"{t}: {what_} speed", round(r[f"{k}_tok_s"], 3),
                             r.get(f"{k}_tok_s_std"), r.get(f"{k}_tok_s_reps"), how=how,
                             disturbed=r.get(f"{k}_tok_s_disturbed", False)))
        out += [Figure(f"quant.{t}.ppl", f"{t}: perplexity", round(r["ppl"], 5), "1", "lower", "quality", how,
                       exact=True, source=what),
                Figure(f"quant.{t}.kld", f"{t}: KL divergence vs {r.get('reference', 'the reference type')}",
                       round(r["kld_vs_ref"], 6), "nats", "lower", "quality", how, exact=True, source=what,
                       interval=r.get("kld_ci95") or None)]
    return out + kv_quality_figures(sw.get("kv_quality"), how)


def kv_quality_figures(kq: dict | None, how: str) -> list[Figure]:
    """Each KV-cache type's perplexity, KLD vs the f16 cache (95 % interval over positions) and measured
    bytes, on the same weights and tokens."""
    if not kq or not kq.get("rows"):
        return []
    what = kq["scoring"]["what"]
    note = "flash attention on for every cache type (llama.cpp needs it for a quantized V cache)"
    out = []
    for r in kq["rows"]:
        t, w = r["kv_type"], f"{r['weights']} weights"
        out.append(Figure(f"kv.{t}.ppl", f"{t} KV cache: perplexity ({w}, {r['context']}-token windows)",
                          round(r["ppl"], 5), "1", "lower", "quality", how, interval=r.get("ppl_ci95"),
                          exact=True, source=what, note=note))
        if t != "f16":
            out.append(Figure(f"kv.{t}.kld", f"{t} KV cache: KL divergence vs the f16 cache ({w}, "
                              f"{r['context']}-token windows)", round(r["kld"], 6), "nats", "lower",
                              "quality", how, interval=r.get("kld_ci95"), n=r.get("positions"), exact=True,
                              key=True,
                              source=what, note=note))
        if r.get("kv_bytes"):
            out.append(Figure(f"kv.{t}.bytes", f"{t} KV cache: bytes llama.cpp allocated for {r['kv_cells']} "
                              "cells", r["kv_bytes"], "bytes", "lower", "memory", how, exact=True))
    return out


def projection_figures(res: dict) -> list[Figure]:
    p = res.get("projection")
    if not p:
        return []
    dev, err = p["device"], p["expected_error"]
    out = [setting("device", "device projected onto", dev["key"])]
    for r in p["rows"]:
        if r["tok_s"] is None:
            continue
        kind = "prefill of {n} tokens" if r["kind"] == "prefill" else "decode at depth {d}"
        label = kind.format(n=r.get("n_tokens"), d=r.get("depth")) + f" on {dev['name']} (projected)"
        out.append(Figure(f"projected.{r['test']}", label, round(r["tok_s"], 2), "tok/s", "higher", "speed",
                          "projected", expected_error=r.get("expected_error", err),
                          key=r["kind"] == "decode" and r.get("depth") == 0, source=p["calibration"],
                          note="an upper estimate" if r.get("expected_error", err) is None else ""))
    out.append(Figure("projected.flagged", "projected tests that do not fit the device's memory",
                      len(p["flagged"]), "tests", "lower", "memory", "projected", exact=True))
    return out


def profile_figures(res: dict) -> list[Figure]:
    """Every figure of a profile result, in the order the report and compare show them."""
    how = res.get("where", "measured here")
    host = res["host"]
    out = [setting("threads", "CPU threads", res["threads"], "threads"),
           analytic("params", "parameters", res["model"]["params"], "parameters", group="size")]
    if res.get("device_fingerprint"):
        out.append(setting("device.fingerprint", "device measured on", res["device_fingerprint"]["text"]))
    if res["backends"] and "bandwidth_Bps" in host:
        out += [Figure("host.bandwidth", "host memory bandwidth", round(host["bandwidth_Bps"] / 1e9, 2),
                       "GB/s",
                       "higher", "speed", how, note="DRAM: best torch / numpy copy at a working set ≥ 4 × "
                                                    "the last-level cache"),
                Figure("host.matmul", "host matmul peak", round(host["flops"] / 1e9, 1), "GFLOP/s", "higher",
                       "speed", how, note="best of ≤ 5 torch matmuls, fp32 / bf16 / int8")]
    return (out + backend_figures(res, how) + kv_figures(res) + sweep_figures(res, how)
            + projection_figures(res))

