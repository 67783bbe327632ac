"""ONNX int4 before and after the recipe search, against GGUF q4_k_m scored on the same tokens:
every candidate's size and KLD against the fp32 HF model (the one scorer, slm/score.py), the builder default
("before") and the kept recipe ("after"). The target on SmolLM2-135M: KLD ≤ 1.5 × q4_k_m's at ≤ 105 MiB, on
the first 512 tokens of GPL-3 (`slm export --eval-text` with that file scores exactly those, in 256-token
windows).

    .venv/bin/python benchmarks/bench_onnx_int4.py [--model DIR] [--text FILE] [--all] [--out DIR]

About 3 minutes on 2 cores for the default candidate list; --all adds GPTQ (about 2.5 more minutes here).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF checkpoint (default: the bundled SmolLM2-135M-Instruct, imported)")
    ap.add_argument("--text", default=GPL3 if Path(GPL3).is_file() else None,
                    help="held-out text (default: GPL-3, as the target is measured; "
                         "else the built-in passage)")
    ap.add_argument("--all", action="store_true", help="every candidate (GPTQ included)")
    ap.add_argument("--out", help="export folder (default: a temporary one)")
    a = ap.parse_args()

    from slm.gguf_import import import_gguf
    from slm.quant.export import HELD_OUT_TEXT, ExportArgs, export

    work = Path(a.out or tempfile.mkdtemp(prefix="bench-int4-"))
    model = Path(a.model) if a.model else import_gguf(None, work / "model")
    args = ExportArgs(gguf=["q4_k_m"], onnx=["int4:all" if a.all else "int4"], validate=False, force=True,
                      eval_text=a.text)
    res = export(model, work / "export", args)
    s = res["onnx_int4"]
    text = Path(a.text).read_text() if a.text else HELD_OUT_TEXT
    q4 = q4_k_m_row(model, work / "export" / next(f["path"] for f in res["files"] if f["type"] == "q4_k_m"),
                    text, s["scoring"]["n_ctx"])
    print(f"text {a.text or 'built-in passage'}: {s['score_tokens']} tokens scored "
          f"({s['scoring']['what']}), KLD "
          f"against the {s['reference']}; size bound {s['bound_bytes'] / MIB:.1f} MiB ({s['bound_from']})")
    print(f"{'candidate':16} {'settings':54} {'MiB':>7} {'fits':>5} {'KLD':>7} {'×q4_k_m':>8} {'top-1':>6} "
          f"{'build s':>8}")
    print(f"{'gguf q4_k_m':16} {'llama.cpp Q4_K_M (file size)':54} {q4['bytes'] / MIB:7.1f} {'—':>5} "
          f"{q4['kld_mean']:7.3f} {1:8.2f} {q4['top1_agree']:6.3f} {'':>8}")
    for c in s["candidates"]:
        if c.get("error"):
            print(f"{c['name']:16} failed: {c['error'][:80]}")
            continue
        mark = " ← kept" if c["name"] == s["kept"] else (
            " ← before (builder default)" if c["name"] == "default" else "")
        print(f"{c['name']:16} {str(c.get('note') or c.get('options'))[:54]:54} "
              f"{c['weight_bytes'] / MIB:7.1f} "
              f"{'yes' if c['fits'] else 'no':>5} {c['kld']:7.3f} {c['kld'] / q4['kld_mean']:8.2f} "
              f"{c.get('top1') or 0:6.3f} {c['build_s']:8.1f}{mark}")
    before = next((c for c in s["candidates"] if c["name"] == "default"), None)
    kept = next(c for c in s["candidates"] if c["name"] == s["kept"])
    if before:
        met = kept["kld"] <= 1.5 * q4["kld_mean"] and kept["weight_bytes"] <= 105 * MIB
        print(f"\nbefore: builder default KLD {before['kld']:.3f} in {before['weight_bytes'] / MIB:.1f} MiB; "
              f"after: {kept['name']} KLD {kept['kld']:.3f} "
              f"({kept['kld'] / q4['kld_mean']:.2f}× q4_k_m's {q4['kld_mean']:.3f})"
              f" in {kept['weight_bytes'] / MIB:.1f} MiB; target ≤ 1.5× at ≤ 105 MiB: "
              f"{'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
