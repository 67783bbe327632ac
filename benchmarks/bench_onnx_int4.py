"""ONNX int4 before and after the recipe search: every candidate's size and KLD against the fp32 HF model (the one
scorer, quant/score.py), the builder default ("before") and the kept recipe ("after"), against the size bound of a
q4_k_m GGUF of the same shape (issue 13's target on SmolLM2-135M: KLD ≤ 0.14 at ≤ 105 MiB).

    .venv/bin/python benchmarks/bench_onnx_int4.py [--model DIR] [--all] [--out DIR]

Takes ~3 minutes on 2 cores for the default candidate list (--all adds GPTQ: ~10 more minutes).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

MIB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF checkpoint (default: the bundled SmolLM2-135M-Instruct, imported)")
    ap.add_argument("--all", action="store_true", help="every candidate (GPTQ included)")
    ap.add_argument("--out", help="export folder (default: a temporary one)")
    a = ap.parse_args()

    from slm.gguf_import import import_gguf
    from slm.quant.export import ExportArgs, export

    work = Path(a.out or tempfile.mkdtemp(prefix="bench-int4-"))
    model = Path(a.model) if a.model else import_gguf(None, work / "model")
    res = export(model, work / "export", ExportArgs(gguf=[], onnx=["int4:all" if a.all else "int4"], validate=False,
                                                     force=True))
    s = res["onnx_int4"]
    print(f"size bound {s['bound_bytes'] / MIB:.1f} MiB ({s['bound_from']}); scored {s['score_tokens']} tokens")
    print(f"{'candidate':16} {'settings':54} {'MiB':>7} {'fits':>5} {'KLD':>7} {'top-1':>6} {'build s':>8}")
    for c in s["candidates"]:
        if c.get("error"):
            print(f"{c['name']:16} failed: {c['error'][:80]}")
            continue
        mark = " ← kept" if c["name"] == s["kept"] else (" ← before (builder default)" if c["name"] == "default" else "")
        print(f"{c['name']:16} {str(c.get('note') or c.get('options'))[:54]:54} {c['weight_bytes'] / MIB:7.1f} "
              f"{'yes' if c['fits'] else 'no':>5} {c['kld']:7.3f} {c.get('top1') or 0:6.3f} {c['build_s']:8.1f}{mark}")
    before = next((c for c in s["candidates"] if c["name"] == "default"), None)
    kept = next(c for c in s["candidates"] if c["name"] == s["kept"])
    if before:
        print(f"\nbefore: builder default KLD {before['kld']:.3f} in {before['weight_bytes'] / MIB:.1f} MiB; after: "
              f"{kept['name']} KLD {kept['kld']:.3f} in {kept['weight_bytes'] / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
