"""ONNX int4 recipes on both axes, side by side in one run: every candidate's KLD against the fp32 HF model
(the one scorer, slm/score.py), weight size, decode and prefill tok/s on this machine (slm.quant.onnx_speed:
the profiler's protocol, short), the builder default ("before"), the recipe `--int4-rule` keeps, and
llama.cpp q4_k_m and q4_0 on the same scored tokens and threads. Targets on SmolLM2-135M: the kept recipe's
KLD ≤ 1.5 × q4_k_m's AND its decode ≥ 0.9 × the builder default's, at ≤ 105 MiB, on the first 512 tokens of
GPL-3.

`--model` takes any HF folder: the bundled model is dequantized Q4_1 (its blocks of 32 sit on a 16-level grid
that float-zero-point recipes at block 32 reproduce), so a fair control is the same model with every block
dithered by ±½ grid step (uniform), which makes the weights continuous, as a bf16-trained model's are:
`--dither` runs on that copy.

    .venv/bin/python benchmarks/bench_onnx_int4.py [--model DIR] [--text FILE] [--all] [--threads N]
                                                   [--rule balanced|quality|speed] [--out DIR] [--dither]

About 5 minutes on 2 quiet cores for the default list (the slow float-zero-point HQQ is timed too); --all adds
GPTQ. On a loaded machine every speed is lower: read the ratios, and the load printed at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

MIB = 2**20
GPL3 = "/usr/share/common-licenses/GPL-3"


def q4_k_m_row(model: Path, gguf: Path, text: str, n_ctx: int) -> dict:
    """KLD of the q4_k_m GGUF against the fp32 HF model on the tokens the int4 search scored (same split, same
    windows, same scorer)."""
    from slm.quant import runtimes as rt
    from slm.quant import validate
    from slm.quant.onnx_search import reference_scores, split_text
    from slm.score import Scoring, kld, score
    from slm.spec import load_spec

    ids, _ = split_text(validate.text_ids(model, text, load_spec(model).vocab, n_ctx), n_ctx)
    scoring = Scoring("all", n_ctx)
    ref = reference_scores(model, ids, scoring)
    llama = rt.open_gguf(gguf, n_ctx)
    try:
        got = score(llama.logits, ids, scoring)
    finally:
        llama.close()
    return {**kld(ref, got, scoring), "bytes": gguf.stat().st_size}


def dithered(model: Path, out: Path, seed: int = 0) -> Path:
    """A copy of `model` whose 2-D weights get uniform noise of ±½ step of a 16-level grid per block of 32
    ((max − min) / 15 of the block): off any 4-bit grid, about a 5-bit quantization's perturbation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(model, torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2 and p.shape[1] % 32 == 0:
                b = p.view(p.shape[0], -1, 32)
                step = (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) / 15
                b += (torch.rand(b.shape, generator=g) - 0.5) * step
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF checkpoint (default: the bundled SmolLM2-135M-Instruct, imported)")
    ap.add_argument("--text", default=GPL3 if Path(GPL3).is_file() else None,
                    help="held-out text (default: GPL-3, as the target is measured; "
                         "else the built-in passage)")
    ap.add_argument("--all", action="store_true", help="every candidate (GPTQ included)")
    ap.add_argument("--out", help="export folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every runtime (default 2)")
    ap.add_argument("--rule", default="balanced", help="--int4-rule: balanced, quality or speed")
    ap.add_argument("--dither", action="store_true", help="run on a copy dithered off any 4-bit grid")
    a = ap.parse_args()

    from slm.gguf_import import import_gguf
    from slm.quant.export import HELD_OUT_TEXT, ExportArgs, export

    work = Path(a.out or tempfile.mkdtemp(prefix="bench-int4-"))
    model = Path(a.model) if a.model else import_gguf(None, work / "model")
    if a.dither:
        model = dithered(model, work / "model-dithered")
    args = ExportArgs(gguf=["q4_k_m", "q4_0"], onnx=["int4:all" if a.all else "int4"], validate=False,
                      force=True, eval_text=a.text, threads=a.threads, int4_rule=a.rule)
    res = export(model, work / "export", args)
    s = res["onnx_int4"]
    text = Path(a.text).read_text() if a.text else HELD_OUT_TEXT
    gguf = work / "export" / next(f["path"] for f in res["files"] if f["type"] == "q4_k_m")
    q4 = q4_k_m_row(model, gguf, text, s["scoring"]["n_ctx"])
    q4.update(llama_speed(gguf, s["speed_protocol"], a.threads))
    sp = s["speed_protocol"]
    print(f"text {a.text or 'built-in passage'}: {s['score_tokens']} tokens scored ({s['scoring']['what']}), "
          f"KLD against the {s['reference']}; size bound {s['bound_bytes'] / MIB:.1f} MiB; speed: "
          f"{a.threads} threads, mean ± 95 % of {sp['reps']} runs, decode {sp['tokens']} steps, prefill "
          f"{sp['prompt']} tokens; rule {s['rule']}: {s['rule_text']}")
    g = s["source_grid"]
    print(f"source weights on a 4-bit grid: {100 * g['share_on_grid']:.0f} % of sampled blocks ({g['how']})")
    before = next((c for c in s["candidates"] if c["name"] == "default"), None)
    head = (f"{'candidate':14} {'settings':50} {'MiB':>6} {'fits':>4} {'KLD':>6} {'×q4km':>6} {'decode':>13} "
            f"{'×default':>8} {'prefill':>13}")
    print(head)
    print(f"{'gguf q4_k_m':14} {'llama.cpp Q4_K_M (file size)':50} {q4['bytes'] / MIB:6.1f} {'—':>4} "
          f"{q4['kld_mean']:6.3f} {1:6.2f} {_pm(q4['decode']):>13} "
          f"{_ratio(q4['decode']['tok_s'], before):>8} {_pm(q4['prefill']):>13}")
    # q4_0 beside it: the same 4-bit class as the ONNX int4 recipes (on shapes whose rows are not multiples of
    # 256, q4_k_m falls back to Q5_0 / Q8_0 for most tensors and is really ~6 bits per weight)
    g40 = work / "export" / next(f["path"] for f in res["files"] if f["type"] == "q4_0")
    q40 = {**q4_k_m_row(model, g40, text, s["scoring"]["n_ctx"]),
           **llama_speed(g40, s["speed_protocol"], a.threads)}
    print(f"{'gguf q4_0':14} {'llama.cpp Q4_0 (file size)':50} {q40['bytes'] / MIB:6.1f} {'—':>4} "
          f"{q40['kld_mean']:6.3f} {q40['kld_mean'] / q4['kld_mean']:6.2f} {_pm(q40['decode']):>13} "
          f"{_ratio(q40['decode']['tok_s'], before):>8} {_pm(q40['prefill']):>13}")
    for c in s["candidates"]:
        if "kld" not in c:
            print(f"{c['name']:14} failed: {c.get('error', '?')[:80]}")
            continue
        mark = " ← kept" if c["name"] == s["kept"] else ""
        dec = {"tok_s": c.get("decode_tok_s"), "ci95": c.get("decode_ci95")}
        pre = {"tok_s": c.get("prefill_tok_s"), "ci95": c.get("prefill_ci95")}
        what = str(c.get("note") or c.get("options"))[:50]
        print(f"{c['name']:14} {what:50} {c['weight_bytes'] / MIB:6.1f} "
              f"{'yes' if c['fits'] else 'no':>4} {c['kld']:6.3f} {c['kld'] / q4['kld_mean']:6.2f} "
              f"{_pm(dec):>13} {_ratio(dec['tok_s'], before):>8} {_pm(pre):>13}{mark}")
    kept = next(c for c in s["candidates"] if c["name"] == s["kept"])
    if before:
        q_ok = kept["kld"] <= 1.5 * q4["kld_mean"] and kept["weight_bytes"] <= 105 * MIB
        s_ok = (kept.get("decode_tok_s") or 0) >= 0.9 * before["decode_tok_s"]
        print(f"\nkept {kept['name']}: KLD {kept['kld']:.3f} = {kept['kld'] / q4['kld_mean']:.2f}× q4_k_m's "
              f"(target ≤ 1.5×: {'met' if q_ok else 'missed'}), decode "
              f"{_ratio(kept.get('decode_tok_s'), before)} the builder default's (target ≥ 0.90×: "
              f"{'met' if s_ok else 'missed'}), {kept['weight_bytes'] / MIB:.1f} MiB")
    print(f"kept vs llama.cpp q4_0 (the same 4-bit class): KLD {kept['kld'] / q40['kld_mean']:.2f}×")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs")


def _pm(d: dict) -> str:
    if not d.get("tok_s"):
        return "—"
    return f"{d['tok_s']:.1f} ± {d['ci95']:.1f}" if d.get("ci95") is not None else f"{d['tok_s']:.1f}"


def _ratio(v, before) -> str:
    return f"{v / before['decode_tok_s']:.2f}×" if v and before and before.get("decode_tok_s") else "—"


def llama_speed(gguf: Path, sp: dict, threads: int) -> dict:
    """llama.cpp's decode and prefill on the same protocol as the ONNX candidates (same lengths, runs,
    threads)."""
    import statistics

    from slm.quant.llamacpp import LlamaCpp
    from slm.stats import ci95_of

    out = {}
    with LlamaCpp(gguf, sp["prompt"] + sp["tokens"] + 1, threads) as b:
        for name, fn, n in (("prefill", lambda: b.prefill(sp["prompt"]), sp["prompt"]),
                            ("decode", lambda: b.decode(sp["tokens"], 1), sp["tokens"])):
            for _ in range(sp["warmup"]):
                fn()
            v = [n / fn() for _ in range(sp["reps"])]
            out[name] = {"tok_s": statistics.fmean(v), "ci95": ci95_of(v)}
    return out


if __name__ == "__main__":
    main()
