"""The Jetson projection against published measurements: every point of profiling/calibration_table.py,
the device model's prediction, and its relative error — fitted points, the points held out of the fit (the
honest test: target ±25 % for 135M–8B models), and excluded ones. Pure computation (no model, no device):

    .venv/bin/python benchmarks/bench_projection.py

Prints one decode table per kernel family, the prefill table (llama-bench pp512, llama.cpp CUDA) and the
held-out summary.
"""

from __future__ import annotations

from slm.profiling.calibration import GROUPS, fit_all, fit_prefill, prefill_bound_of
from slm.profiling.calibration_table import POINTS, PREFILL_POINTS

TARGET = 0.25  # the target: decode within ±25 % on held-out points for models from 135M to 8B


def main() -> None:
    fits = fit_all()
    worst = {}
    for group, fit in fits.items():
        print(f"\n{group}: efficiency {fit.efficiency:.2f} of datasheet bandwidth, overhead "
              + ", ".join(f"{b} {s * 1e3:.1f} ms/token" for b, s in fit.overhead_s.items())
              + "".join(f"; {f} family efficiency {e:.2f}" for f, e in fit.family_efficiency.items()))
        print(f"{'role':9} {'point':28} {'device':28} {'params':>8} {'published':>10} {'projected':>10} "
              f"{'error':>8}")
        errors = {**fit.residuals, **fit.held_out, **fit.excluded}
        for p in sorted((p for p in POINTS if p.backend in GROUPS[group]), key=lambda p: (p.role, p.params)):
            err = errors.get(p.key)
            if err is None:
                continue
            print(f"{p.role:9} {p.key[:28]:28} {p.device[:28]:28} {p.params / 1e9:7.2f}B "
                  f"{p.decode_tok_s:10.1f} {fit.predict(p):10.1f} {err:+8.1%}")
        held = {k: v for k, v in fit.held_out.items()}
        worst[group] = max(held.values(), key=abs) if held else float("nan")
        print(f"fit RMS {fit.rms:.0%} over {len(fit.residuals)} points; held-out worst {worst[group]:+.1%} "
              f"over {len(held)} points")
    pf = fit_prefill()
    print(f"\nprefill (llama.cpp CUDA, pp512): efficiency {pf.efficiency:.2f} of the GPU's FP16 bound")
    print(f"{'role':9} {'point':28} {'device':28} {'bound':>8} {'published':>10} {'projected':>10} "
          f"{'error':>8}")
    errors = {**pf.residuals, **pf.held_out, **pf.excluded}
    for p in sorted(PREFILL_POINTS, key=lambda p: (p.role, p.key)):
        bound = prefill_bound_of(p)
        print(f"{p.role:9} {p.key[:28]:28} {p.device[:28]:28} {bound:8.0f} {p.prefill_tok_s:10.1f} "
              f"{pf.efficiency * bound:10.1f} {errors[p.key]:+8.1%}")
    worst["prefill"] = max(pf.held_out.values(), key=abs)
    print(f"\nheld-out target ±{TARGET:.0%}: "
          + "; ".join(f"{g} {'met' if abs(w) <= TARGET else 'missed'} (worst {w:+.1%})"
                      for g, w in worst.items()))


if __name__ == "__main__":
    main()
