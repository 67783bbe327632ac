"""What `slm plan` recommends, and the one ranking its table shows.

The rule: among the candidates that meet the budget (fit in memory, reach --min-decode and --min-prefill) and
whose quality was MEASURED with a mean KLD ≤ X against the f16 model, the fastest decode is recommended. A
candidate of unknown quality is never recommended, however fast. X defaults to DEFAULT_MAX_KLD (`--max-kld`).

The Pareto front is three-axis — quality (KLD, lower), decode speed (higher), memory at the context (lower) —
over the candidates whose quality is measured: no other measured candidate is at least as good on all three
and better on one. The runner-up on each axis is the measured candidate that meets the budget and is best on
that axis, other than the recommended one: what a user gives up by moving along the front.

The ranking (RANKING, the table's title) is exactly `rank_key`: a test holds the sorted table to it.
"""

from __future__ import annotations

from slm.errors import SlmError
from slm.gguf import kv_element_bytes

# 0.05 nats of mean KL divergence per token against the f16 model. No standard threshold exists; llama.cpp's
# llama-perplexity reports KLD without one. This is the lab's default: on the bundled SmolLM2-135M the 8- and
# 6-bit types measure far below it and the 4-bit ones near or above it (benchmarks/bench_plan.py prints them),
# so the rule keeps the types whose distributions stay close to the source and says so; `--max-kld` moves it.
DEFAULT_MAX_KLD = 0.05
RANKING = ("ranked: meets the budget with measured KLD ≤ {x:g} first, fastest decode first; then meets the "
           "budget with measured KLD above {x:g}, lowest KLD first; then meets the budget with quality "
           "unknown, fastest first; then misses the budget, fastest first")


def check_max_kld(x: float) -> float:
    if not isinstance(x, int | float) or not 0 < x < float("inf"):
        raise SlmError(f"--max-kld must be a positive number of nats (got {x}): e.g. --max-kld 0.05")
    return float(x)


def ranking(max_kld: float) -> str:
    return RANKING.format(x=max_kld)


def rule(max_kld: float) -> str:
    return f"the fastest that fits with measured KLD ≤ {max_kld:g}"


def rank_key(max_kld: float):
    """The sort key RANKING states, group by group."""
    def key(r):
        if not r["meets_budget"]:
            return (3, -r["decode_tok_s"])
        if r["kld"] is None:
            return (2, -r["decode_tok_s"])
        if r["kld"] <= max_kld:
            return (0, -r["decode_tok_s"], r["kld"])
        return (1, r["kld"], -r["decode_tok_s"])
    return key


def mark_pareto(rows: list[dict]) -> None:
    """pareto = quality measured, and no other measured candidate is at least as good on KLD, decode and
    memory and strictly better on one (unmeasured candidates are never on the front)."""
    measured = [r for r in rows if r["kld"] is not None]
    for r in rows:
        r["pareto"] = r["kld"] is not None and not any(_dominates(o, r) for o in measured)


def _dominates(o: dict, r: dict) -> bool:
    ge = (o["kld"] <= r["kld"] and o["decode_tok_s"] >= r["decode_tok_s"]
          and o["memory_bytes"] <= r["memory_bytes"])
    gt = (o["kld"] < r["kld"] or o["decode_tok_s"] > r["decode_tok_s"]
          or o["memory_bytes"] < r["memory_bytes"])
    return ge and gt


AXES = {"quality": ("kld", 1), "speed": ("decode_tok_s", -1), "memory": ("memory_bytes", 1)}


def choose(rows: list[dict], max_kld: float) -> dict:
    """{"recommended": row | None, "rule", "runner_up": {axis: row | None}, "eligible", "unknown_meeting"}:
    rows must already carry kld, meets_budget, decode_tok_s, memory_bytes."""
    ok = [r for r in rows if r["meets_budget"] and r["kld"] is not None]
    eligible = [r for r in ok if r["kld"] <= max_kld]
    best = min(eligible, key=rank_key(max_kld), default=None)
    runner = {}
    for axis, (k, sign) in AXES.items():
        others = [r for r in ok if r is not best]
        # ties on the axis: the faster, then the smaller, then the wider KV cache
        runner[axis] = min(others, default=None, key=lambda r, k=k, sign=sign: (
            sign * r[k], -r["decode_tok_s"], r["memory_bytes"], -kv_element_bytes(r["kv_type"])))
    fastest = min((r for r in rows if r["meets_budget"]), key=lambda r: -r["decode_tok_s"], default=None)
    return {"recommended": best, "rule": rule(max_kld), "max_kld": max_kld, "runner_up": runner,
            "fastest_meeting": fastest,
            "eligible": len(eligible), "measured_meeting": len(ok),
            "unknown_meeting": sum(r["meets_budget"] and r["kld"] is None for r in rows)}


def name(r: dict) -> str:
    """A candidate in words: depth (and how reached), weight type, KV type."""
    how = "" if r["variant"] == "as is" else f" ({r['variant']})"
    return f"{r['layers']} layers{how}, {r['type']} weights, {r['kv_type']} KV cache"


def _figures(r: dict, err: float | None) -> str:
    pm = f" ± {err:.0%}" if err else ""
    kci = r.get("kld_ci95")
    kld = f"KLD {r['kld']:.4f}" + (f" ± {kci:.4f}" if kci else "")
    return (f"{r['decode_tok_s']:.0f} tok/s{pm} (projected), {r['memory_bytes'] / 2**20:.0f} MiB, {kld} "
            f"({r['quality_how']})")


def sentence(choice: dict, device: str, context: int, err: float | None, unmeasurable: str = "") -> str:
    """The answer in one line: what to ship on `device` at `context` and the rule that chose it, then the
    runner-up on each axis; or why nothing is recommended (`unmeasurable`: why quality cannot be measured
    here, e.g. an engine that does not run here)."""
    best = choice["recommended"]
    if best is None:
        fix = unmeasurable or "measure them with --measure or pass --quality"
        why = (f"no candidate meets the budget with measured KLD ≤ {choice['max_kld']:g}"
               + (f" ({choice['measured_meeting']} measured ones meet it above that KLD)"
                  if choice["measured_meeting"] else "")
               + (f"; {choice['unknown_meeting']} meet it with quality unknown — {fix}"
                  if choice["unknown_meeting"] else ""))
        f = choice.get("fastest_meeting")
        pm = f" ± {err:.0%}" if err else ""
        fastest = (f" The fastest meeting the budget, quality unknown: {name(f)} at {f['decode_tok_s']:.0f} "
                   f"tok/s{pm} (projected), {f['memory_bytes'] / 2**20:.0f} MiB." if f and f["kld"] is None
                   else "")
        return f"No recommendation on {device} at {context} tokens: {why}.{fastest}"
    out = (f"Recommended on {device} at {context} tokens: {name(best)} — {_figures(best, err)}; "
           f"{choice['rule']}.")
    alts, seen = [], {}
    for axis in ("quality", "speed", "memory"):  # one candidate best on two axes is named once, for both
        r = choice["runner_up"].get(axis)
        if r is not None:
            seen.setdefault(id(r), (r, []))[1].append(axis)
    for r, axes in seen.values():
        alts.append(f"for {' and '.join(axes)}: {name(r)} ({_figures(r, err)})")
    return out + (" Runner-up " + "; ".join(alts) + "." if alts else "")
