"""slm ablate on a tiny expanded chat model: four methods, the same data and token count, one report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm.cli import main
from slm.errors import SlmError
from slm.train.ablate import AblateArgs, lora_rank, new_layer_params
from slm.train.ablate_report import pareto


def test_pareto_front():
    pts = {"a": (0.1, 0.5), "b": (0.2, 0.4), "c": (0.0, 0.1), "d": (0.3, 0.9)}
    assert sorted(pareto(pts)) == ["a", "c", "d"]  # b is beaten by a on both axes


def test_ablate_runs_four_methods_on_the_same_tokens(tiny_expanded, tiny_data, tmp_path, capsys):
    data, _ = tiny_data
    recipe = tmp_path / "cpt.yaml"
    recipe.write_text(f"model: {tiny_expanded}\ndata: {data}\nout: unused\nseq_len: 32\nglobal_batch: 2\n"
                      "micro_batch: 2\nsteps: 1\nlr: 1e-3\neval: false\nprogress: false\nreport: false\n")
    out = tmp_path / "ablate"
    assert main(["ablate", str(recipe), "--budget", "128", "--out", str(out), "--probe-prompts", "2",
                 "--eval-tokens", "128", "--json", "--keep-weights"]) == 0
    res = json.loads(capsys.readouterr().out)
    methods = res["methods"]
    assert list(methods) == ["expanded", "lora", "full", "freeze"]
    assert {m["tokens"] for m in methods.values()} == {128} and {m["steps"] for m in methods.values()} == {2}
    n_new, new, copied = new_layer_params(tiny_expanded)
    assert new == [3, 7] and copied == [2, 5]
    assert methods["expanded"]["trainable_params"] == n_new == methods["freeze"]["trainable_params"]
    assert methods["freeze"]["trainable"] == [2, 5] and methods["full"]["trainable_params"] > n_new
    r = methods["lora"]["lora_r"]
    assert r == lora_rank(res["base"], n_new,
                          ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert abs(methods["lora"]["trainable_params"] - n_new) <= n_new / r  # matched within one rank step
    # weight space: expansion leaves every original layer bit-identical; freeze-tuning changes exactly 2
    assert (methods["expanded"]["diff"]["changed_layers"] == 0
            and methods["expanded"]["diff"]["intruders"] == 0)
    assert methods["expanded"]["diff"]["new_layers"] == 2 and methods["freeze"]["diff"]["changed_layers"] == 2
    assert methods["full"]["diff"]["changed_layers"] == 6
    # each method at its own default rate, not the recipe's shared lr 1e-3
    from slm.train.ablate import DEFAULT_LR
    for m in methods:
        assert json.loads((out / "runs" / m / "slm.json").read_text())["args"]["lr"] == DEFAULT_LR[m]
    assert DEFAULT_LR["full"] < DEFAULT_LR["expanded"]
    for m in methods.values():
        d = m["delta"][res["domain"]]
        assert d["se"] > 0 and m["delta"][res["probe_set"]]["se"] > 0
        assert set(m["forgetting"]["earlier_tasks"]) == {"prose", res["probe_set"]}
        per = m["forgetting"]["per_set"]
        assert set(per) == {"prose", res["probe_set"]}
        assert per["prose"]["change"] == pytest.approx(-m["delta"]["prose"]["change"])
        parts = per["prose"]["change"] + per[res["probe_set"]]["change"]
        assert m["forgetting"]["bwt"] == pytest.approx(parts / 2)
        assert set(m["flips"][0][res["probe_set"]]) == {"exact", "extract", "ended"}
    assert res["domain"] == "code"  # the heavier source (1.5 vs 1.0)
    html = (out / "report.html").read_text()
    assert "<svg" in html and "runs/lora/report.html" in html and "±" in html and "Pareto" in html
    assert "Forgetting per set" in html and "McNemar" in html and "peak lr" in html
    assert json.loads((out / "slm.json").read_text())["kind"] == "ablate"
    # run again without --force: the finished runs are reused, not retrained
    stamp = {m: (out / "runs" / m / "slm.json").stat().st_mtime_ns for m in methods}
    assert main(["ablate", str(recipe), "--budget", "128", "--out", str(out), "--probe-prompts", "2",
                 "--eval-tokens", "128", "--methods", "expanded,freeze", "--no-diff"]) == 0
    assert all((out / "runs" / m / "slm.json").stat().st_mtime_ns == stamp[m] for m in ("expanded", "freeze"))
    # other budget
    assert main(["ablate", str(recipe), "--budget", "256", "--out", str(out), "--methods", "expanded"]) == 2


def test_ablate_refuses_bad_arguments(tmp_path):
    with pytest.raises(SlmError, match="methods"):
        AblateArgs(recipe="r.yaml", out=str(tmp_path / "o"), methods=["dora"])
    with pytest.raises(SlmError, match="freeze"):
        AblateArgs(recipe="r.yaml", out=str(tmp_path / "o"), freeze="bottom")
    with pytest.raises(SlmError, match="positive"):
        AblateArgs(recipe="r.yaml", out=str(tmp_path / "o"), lr={"full": 0})
    with pytest.raises(SlmError, match="seeds"):
        AblateArgs(recipe="r.yaml", out=str(tmp_path / "o"), seeds=0)
    with pytest.raises(SlmError, match="lr-grid"):
        AblateArgs(recipe="r.yaml", out=str(tmp_path / "o"), lr_grid=[1, -3])
    with pytest.raises(SlmError, match="choose from"):
        AblateArgs(recipe="r.yaml", out=str(tmp_path / "o"), lr={"dora": 1e-4})


def _delta(change, se):
    return {"change": change, "se": se, "significant": abs(change) > 1.96 * se}


def test_headline_names_the_best_gain_per_forgetting_and_never_a_winner_inside_the_noise():
    from slm.train.ablate_report import headline

    def result(**methods):
        return {"domain": "code", "probe_set": "instruct-probe",
                "methods": {m: {"tokens": 2048, "delta": {"code": _delta(*d), "instruct-probe": _delta(*p)}}
                            for m, (d, p) in methods.items()}}

    # full gains most but forgets; expanded gains less with a probe rise inside the noise → expanded
    r = result(expanded=((-0.20, 0.02), (0.01, 0.02)), full=((-0.30, 0.02), (0.15, 0.02)),
               lora=((-0.25, 0.02), (0.10, 0.02)))
    assert "expanded gained the most per unit of forgetting" in headline(r)
    assert "no measurable forgetting" in headline(r)
    # every method forgets: the best ratio wins (lora 0.25/0.05 = 5 > full 0.30/0.15 = 2)
    r = result(full=((-0.30, 0.02), (0.15, 0.02)), lora=((-0.25, 0.02), (0.05, 0.01)))
    assert "lora gained the most" in headline(r) and "+0.050 ± 0.020" in headline(r)  # 1.96 × s.e.
    # no domain gain outside the noise: nobody is named
    r = result(full=((-0.01, 0.02), (0.15, 0.02)), lora=((0.02, 0.02), (0.0, 0.01)))
    assert "no method's domain gain is outside the noise" in headline(r)


def test_loss_changes_are_paired_over_the_same_tokens():
    """Two models scored on the same tokens: a small consistent shift is significant with the paired s.e.,
    though each model's own spread (√(se_a² + se_b²)) would call it noise; without per-token losses the bound
    is used."""
    import numpy as np

    from slm.train.evaluate import loss_change as _delta
    from slm.train.evaluate import public as _public

    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 1.5, 2000)  # per-token losses with a wide spread
    b = a - 0.05 + rng.normal(0, 0.05, a.size)  # the same tokens, 0.05 nats lower

    def row(t):
        return {"loss": float(t.mean()), "loss_se": float(t.std(ddof=1) / np.sqrt(t.size)), "_tokens": t}

    paired = _delta(row(a), row(b))
    assert paired["se_how"] == "paired" and paired["significant"]
    assert paired["se"] == pytest.approx((b - a).std(ddof=1) / np.sqrt(a.size))
    bound = _delta(_public({"x": row(a)})["x"], _public({"x": row(b)})["x"])
    assert (bound["se_how"].startswith("independent") and not bound["significant"]
            and bound["se"] > 10 * paired["se"])


def test_headline_names_no_single_winner_when_the_ratios_overlap():
    from slm.train.ablate_report import headline

    r = {"domain": "code", "probe_set": "instruct-probe",
         "methods": {"expanded": {"tokens": 2048, "delta": {"code": _delta(-0.039, 0.009),
                                                            "instruct-probe": _delta(0.027, 0.009)}},
                     "freeze": {"tokens": 2048, "delta": {"code": _delta(-0.057, 0.012),
                                                          "instruct-probe": _delta(0.044, 0.012)}}}}
    h = headline(r)
    assert "expanded and freeze gained about as much" in h and "intervals overlap" in h


def test_headline_ties_methods_without_measurable_forgetting_whose_gains_overlap():
    from slm.train.ablate_report import headline

    r = {"domain": "code", "probe_set": "instruct-probe",
         "methods": {"expanded": {"tokens": 2048, "delta": {"code": _delta(-0.050, 0.010),
                                                            "instruct-probe": _delta(0.001, 0.01)}},
                     "freeze": {"tokens": 2048, "delta": {"code": _delta(-0.049, 0.010),
                                                          "instruct-probe": _delta(-0.002, 0.01)}}}}
    assert ("expanded and freeze learned the domain with no measurable forgetting, gains overlapping"
            in headline(r))
    # a significant drop on IFEval-verified instructions is forgetting too: the tie says so
    r["methods"]["freeze"]["rates"] = {"ifeval": {"prompt_strict": _delta(-0.083, 0.033)}}
    h = headline(r)
    assert "learned the domain with no measurable forgetting" not in h
    assert "no measurable probe-loss rise" in h
    assert "freeze: IFEval-verified instructions (prompt-level strict) -8.3 ± 6.5 points" in h


def test_ablate_seeds_and_lr_grid(tiny_expanded, tiny_data, tmp_path):
    """Two seeds per method: the change is their mean with a t interval over seeds (never below the token
    one); the grid picks each method's lr on validation tokens after the reported ones; weights are dropped
    once evaluated, the records stay."""
    from slm.stats import seed_interval
    from slm.train.ablate import DEFAULT_LR, ablate

    data, _ = tiny_data
    over = [f"model={tiny_expanded}", f"data={data}", "seq_len=32", "global_batch=2", "micro_batch=2",
            "steps=1", "eval=false", "progress=false", "report=false"]
    out = tmp_path / "ab"
    res = ablate(AblateArgs(recipe="", overrides=over, out=str(out), budget=64, methods=["expanded", "full"],
                            seeds=2, lr_grid=[0.5, 2.0], probe_prompts=2, eval_tokens=64, diff=False,
                            humaneval="loss", humaneval_problems=2, ifeval=2))
    for m, r in res["methods"].items():
        assert r["seeds"] == [0, 1] and len(r["flips"]) == 2
        d = r["delta"][res["domain"]]
        mean, half = seed_interval(d["seeds"], [])
        assert d["change"] == pytest.approx(mean) and d["ci95"] >= half - 1e-12 and len(set(d["seeds"])) == 2
        g = res["lr_grid"][m]
        assert [p["lr"] for p in g["grid"]] == [DEFAULT_LR[m] * 0.5, DEFAULT_LR[m] * 2.0]
        best = min(g["grid"], key=lambda p: p["val_loss"])
        assert g["chosen"] == best["lr"] == r["lr"] == res["lr"][m]
        for run in r["runs"]:
            rec = json.loads((Path(run) / "slm.json").read_text())
            assert rec["args"]["lr"] == r["lr"] and not (Path(run) / "final").exists()
            assert not (Path(run) / "checkpoints").exists() and (Path(run) / "metrics.jsonl").is_file()
    assert not (out / "runs" / "grid").exists()
    assert json.loads((out / "runs" / "full-seed1" / "slm.json").read_text())["args"]["seed"] == 1
    html = (out / "report.html").read_text()
    assert "Learning-rate grid" in html and "mean over 2 seeds" in html and "2 seeds" in html
    # HumanEval's loss is paired like a set; IFEval's rate change is a mean over seeds of paired changes
    for m, r in res["methods"].items():
        assert r["delta"]["humaneval"]["se_how"].startswith("2 seeds")
        d = r["rates"]["ifeval"]["prompt_strict"]
        assert len(d["seeds"]) == 2 and r["flips"][1]["ifeval"]["prompt_strict"]["n"] == 2
    rec = json.loads((out / "slm.json").read_text())["result"]
    for m in res["methods"]:  # one sentence per method: domain gain and what was kept, with intervals
        assert f"{m} (lr " in rec["headline"] and "IFEval-verified instructions" in rec["headline"]
    assert "HumanEval solution loss" in html
    # too few validation tokens after the reported ones: refused before any training
    with pytest.raises(SlmError, match="validation"):
        ablate(AblateArgs(recipe="", overrides=over, out=str(tmp_path / "ab2"), budget=64, lr_grid=[1.0],
                          eval_tokens=10**6, methods=["expanded"]))
    assert not (tmp_path / "ab2" / "runs").exists()
