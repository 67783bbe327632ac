"""slm diff: relative weight change and intruder dimensions (Shuttleworth et al. 2024) against a source
model."""

from __future__ import annotations

import json
import math
import shutil

import torch
from safetensors.torch import load_file, save_file

from slm.cli import main
from slm.surgery.diff import DiffArgs, diff, intruders

Q = "model.layers.2.self_attn.q_proj.weight"


def _edit(src, dst, fn):
    """A copy of checkpoint `src` at `dst` with its tensors passed through fn(dict) (in place)."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _planted(w0: torch.Tensor, scale: float) -> torch.Tensor:
    """w0 + a rank-1 update along a direction orthogonal to w0's top half of left singular vectors (spread
    evenly over the bottom half, so its best |cos| to any one of them is 1/√(n/2)), `scale` × σ_max(w0)
    strong."""
    u0, s0, _ = torch.linalg.svd(w0.double())
    half = u0.shape[1] // 2
    u = u0[:, half:].sum(1) / math.sqrt(u0.shape[1] - half)
    v = torch.randn(w0.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return (w0.double() + scale * s0[0] * torch.outer(u, v / v.norm())).float()


def test_identical_model_has_no_change_and_no_intruders(tiny, tmp_path):
    a = tiny()
    b = shutil.copytree(a, tmp_path / "copy")
    res = diff(b, a)
    assert res["totals"]["intruders"] == 0 and res["totals"]["changed_layers"] == 0
    assert all(r["rel_change"] == 0 and r["source"] == r["layer"] for r in res["layers"])
    assert all(v == 0 for v in res["other"].values())
    assert len(res["layers"][0]["matrices"]) == 7


def test_planted_rank1_update_is_an_intruder(tiny, tmp_path):
    a = tiny()
    b = _edit(a, tmp_path / "planted", lambda t: t.__setitem__(Q, _planted(t[Q], 10.0)))
    res = diff(b, a)
    layer = res["layers"][2]
    assert layer["matrices"]["self_attn.q_proj.weight"]["intruders"] >= 1
    assert layer["matrices"]["self_attn.q_proj.weight"]["rel_change"] > 1
    assert all(v["intruders"] == 0 and v["rel_change"] == 0 for k, v in layer["matrices"].items()
               if k != "self_attn.q_proj.weight")
    assert res["totals"]["intruders"] == layer["intruders"] and res["totals"]["changed_layers"] == 1
    # a small update (a hundredth of σ_max) leaves the top singular vectors aligned: change, but no intruder
    w0 = load_file(str(a / "model.safetensors"))[Q]
    small = intruders(_planted(w0, 0.01), w0, DiffArgs())
    assert small["intruders"] == 0 and min(small["best_cos"]) > 0.9


def test_expanded_model_against_its_source(tiny, tmp_path, capsys):
    from slm.surgery.expand import ExpandArgs, expand

    src = tiny()
    out = tmp_path / "x8"
    expand(src, out, ExpandArgs(groups=2, copies=1, parity=False))
    res = diff(out, src)
    new = [r["layer"] for r in res["layers"] if r["source"] is None]
    assert new == [3, 7] and res["totals"]["new_layers"] == 2
    old = [r for r in res["layers"] if r["source"] is not None]
    assert [r["source"] for r in old] == [0, 1, 2, 3, 4, 5]
    assert all(r["rel_change"] == 0 and r["intruders"] == 0 for r in old)
    # the CLI: JSON, and a report through the guard
    assert main(["diff", str(out), str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["intruders"] == 0
    rep = tmp_path / "diff-report"
    assert main(["diff", str(out), str(src), "-o", str(rep)]) == 0
    html = (rep / "report.html").read_text()
    assert "<svg" in html and "intruder" in html
    assert json.loads((rep / "slm.json").read_text())["kind"] == "diff"
    assert main(["diff", str(out), str(src), "-o", str(rep)]) == 2  # exists: refused without --force
    other = tiny(num_hidden_layers=4)
    assert main(["diff", str(out), str(other)]) == 2  # not the model it was grown from


def test_top_left_vectors_match_the_svd_for_both_shapes():
    """The Gram-matrix route to the top k left singular vectors agrees with a full SVD (up to sign), for wide
    and tall matrices alike."""
    from slm.surgery.diff import top_left

    g = torch.Generator().manual_seed(1)
    for shape in ((48, 96), (96, 48)):
        w = torch.randn(*shape, generator=g, dtype=torch.float64)
        want = torch.linalg.svd(w, full_matrices=False)[0][:, :10]
        got = top_left(w.float(), 10)
        assert got.shape == want.shape
        assert torch.allclose((got * want).sum(0).abs(), torch.ones(10, dtype=torch.float64), atol=1e-5)


def test_diff_many_equals_one_diff_per_model(tiny, tmp_path):
    """diff_many (one SVD per source matrix, shared) gives each model exactly what diff gives it alone."""
    from slm.surgery.diff import diff_many

    a = tiny()
    b = _edit(a, tmp_path / "planted", lambda t: t.__setitem__(Q, _planted(t[Q], 10.0)))
    c = _edit(a, tmp_path / "noisy", lambda t: t.__setitem__(Q, t[Q] * 1.5))
    alone, together = [diff(m, a) for m in (b, c)], diff_many([b, c], a)
    assert [r["layers"] for r in together] == [r["layers"] for r in alone]
    assert together[0]["totals"]["intruders"] >= 1 and together[1]["totals"]["changed_layers"] == 1
