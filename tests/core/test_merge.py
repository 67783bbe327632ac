"""Merges against direct torch computations."""

import json

import pytest
import torch
import yaml

from slm.errors import SlmError
from slm.io import TensorReader
from slm.surgery.expand import ExpandArgs, expand
from slm.surgery.merge import MergeRecipe, load_recipe, merge


def tensors(path):
    r = TensorReader(path)
    return {k: r.get(k) for k in r.keys()}


@pytest.fixture
def pair(tiny):
    return tiny("llama", seed=1, name="a"), tiny("llama", seed=2, name="b")


@pytest.mark.parametrize("t,which", [(0.0, 0), (1.0, 1)])
def test_slerp_endpoints_return_the_inputs_exactly(pair, tmp_path, t, which):
    merge(MergeRecipe(method="slerp", models=[str(pair[0]), str(pair[1])], t=t), tmp_path / "m")
    got, want = tensors(tmp_path / "m"), tensors(pair[which])
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_slerp_midpoint_keeps_the_norm_of_orthogonal_tensors(pair, tmp_path):
    merge(MergeRecipe(method="slerp", models=[str(pair[0]), str(pair[1])], t=[0.0, 1.0]), tmp_path / "m")
    a, b, m = tensors(pair[0]), tensors(pair[1]), tensors(tmp_path / "m")
    assert torch.equal(m["model.layers.0.mlp.up_proj.weight"],
                       a["model.layers.0.mlp.up_proj.weight"])  # t=0 at bottom
    assert torch.equal(m["model.layers.5.mlp.up_proj.weight"],
                       b["model.layers.5.mlp.up_proj.weight"])  # t=1 at top
    # t = 0.4: random tensors are near-orthogonal, slerp keeps the norm
    k = "model.layers.2.mlp.up_proj.weight"
    assert m[k].norm() == pytest.approx(float(a[k].norm()), rel=0.02)
    assert m[k].norm() > ((a[k] + b[k]) / 2).norm() * 1.2  # a linear average would shrink it


def test_linear_and_task_arithmetic_match_torch(tiny, pair, tmp_path):
    base = tiny("llama", seed=3, name="base")
    merge(MergeRecipe(method="linear",
                      models=[{"model": str(pair[0]), "weight": 3}, {"model": str(pair[1]), "weight": 1}]),
          tmp_path / "lin")
    merge(MergeRecipe(method="task_arithmetic", base=str(base),
                      models=[{"model": str(pair[0]), "weight": 0.7},
                              {"model": str(pair[1]), "weight": 0.3}]),
          tmp_path / "ta")
    a, b, c = tensors(pair[0]), tensors(pair[1]), tensors(base)
    lin, ta = tensors(tmp_path / "lin"), tensors(tmp_path / "ta")
    for k in a:
        torch.testing.assert_close(lin[k], (3 * a[k] + 1 * b[k]) / 4, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ta[k], c[k] + 0.7 * (a[k] - c[k]) + 0.3 * (b[k] - c[k]), rtol=1e-6,
                                   atol=1e-7)


def test_instruction_residual_onto_an_expanded_model(tiny, tmp_path):
    base, instruct = tiny("llama", seed=1, name="base"), tiny("llama", seed=2, name="inst")
    expanded = tmp_path / "cpt"
    expand(base, expanded, ExpandArgs(groups=3, parity=False))  # 6 → 9 layers, new [2, 5, 8]
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump({"method": "instruction_residual", "cpt": "cpt", "base": "base",
                                           "instruct": "inst", "alpha": 0.5}))
    res = merge(load_recipe(recipe_file), tmp_path / "out")
    out, cpt, b, i = tensors(tmp_path / "out"), tensors(expanded), tensors(base), tensors(instruct)
    src = json.loads((expanded / "config.json").read_text())["slm_surgery"]["source_layers"]
    for k, v in out.items():
        if k.startswith("model.layers."):
            j, rest = int(k.split(".")[2]), k.split(".", 3)[3]
            if j in (2, 5, 8):
                assert torch.equal(v, cpt[k]), k  # new layers untouched
            else:
                o = f"model.layers.{src[j]}.{rest}"
                torch.testing.assert_close(v, cpt[k] + 0.5 * (i[o] - b[o]), rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(v, cpt[k] + 0.5 * (i[k] - b[k]), rtol=0, atol=1e-6)
    assert {f.name: f.value for f in res["figures"]}["untouched_layers"] == 3
    assert (json.loads((tmp_path / "out" / "config.json").read_text())["slm_surgery"]["new_layers"]
            == [2, 5, 8])


def test_layer_count_and_shape_mismatch_refused(tiny, tmp_path):
    a = tiny("llama", name="a")
    deeper = tiny("llama", name="deep", num_hidden_layers=8)
    wider = tiny("llama", name="wide", intermediate_size=96)
    with pytest.raises(SlmError, match="layer counts differ"):
        merge(MergeRecipe(method="linear", models=[str(a), str(deeper)]), tmp_path / "o")
    with pytest.raises(SlmError, match="shape mismatch"):
        merge(MergeRecipe(method="slerp", models=[str(a), str(wider)]), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_vocab_mismatch_refuse_skip_slice(tiny, tmp_path):
    a = tiny("llama", name="a", seed=1)
    big = tiny("llama", name="big", seed=2, vocab_size=300)
    with pytest.raises(SlmError, match="embeddings: skip"):
        merge(MergeRecipe(method="linear", models=[str(a), str(big)]), tmp_path / "o")
    merge(MergeRecipe(method="linear", models=[str(a), str(big)], embeddings="skip"), tmp_path / "skip")
    merge(MergeRecipe(method="linear", models=[str(a), str(big)], embeddings="slice"), tmp_path / "slice")
    ta, tb = tensors(a), tensors(big)
    skip, sl = tensors(tmp_path / "skip"), tensors(tmp_path / "slice")
    e = "model.embed_tokens.weight"
    assert torch.equal(skip[e], ta[e])
    torch.testing.assert_close(sl[e], (ta[e] + tb[e][:256]) / 2)
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(skip[k], (ta[k] + tb[k]) / 2)


def test_recipe_errors(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("method: linear\nmodels: [a]\nbogus: 1\n")
    with pytest.raises(SlmError, match="unknown recipe key"):
        load_recipe(f)
    f.write_text("method: slerp\nmodels: [a]\n")
    with pytest.raises(SlmError, match="exactly two"):
        load_recipe(f)
    f.write_text("method: slerp\nmodels: [a, b]\n")
    with pytest.raises(SlmError, match=r"t must be in \[0, 1\]"):
        load_recipe(f, ["t=1.5"])


def test_merge_cli(pair, tmp_path, capsys):
    from slm.cli import main

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({"method": "slerp", "models": [str(pair[0]), str(pair[1])]}))
    assert main(["merge", str(f), str(tmp_path / "o"), "t=0"]) == 0
    assert main(["merge", str(f), str(tmp_path / "o")]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    rec = json.loads((tmp_path / "o" / "slm.json").read_text())
    assert rec["args"]["t"] == 0 and len(rec["inputs"]) == 2


@pytest.mark.parametrize("text, message", [
    ("method: slerp\nmodels: [a, b]\nt: abc\n",
     r"slerp t must be in \[0, 1\]: a number or a list of them.*got 'abc'"),
    ("method: slerp\nmodels: [a, b]\nt: [0, abc]\n", r"slerp t must be .*got \[0, 'abc'\]"),
    ("method: slerp\nmodels: [a, b]\nt: .nan\n", r"slerp t must be"),
    ("method: linear\nmodels: [{model: a, weight: abc}]\n", r"entry 1: weight 'abc' is not a finite number"),
    ("method: linear\nmodels: [{weight: 1}]\n", r"`models` entry 1 .* needs a `model:` path"),
    ("method: linear\nmodels: [3]\n", r"`models` entry 1 \(3\) needs a `model:` path"),
    ("method: linear\nmodels: a\n", r"`models: '.*a'` is not a list"),
    ("method: linear\nmodels: [{model: a, wieght: 2}]\n", r"unknown key `wieght`"),
    ("method: task_arithmetic\nbase: 5\nmodels: [a]\n", r"`base: 5` is not a path"),
    ("method: instruction_residual\ncpt: a\nbase: b\ninstruct: c\nalpha: abc\n",
     r"alpha='abc' is not a number"),
    ("- method: linear\n", r"holds a list, not a mapping"),
])
def test_bad_recipe_values_are_one_line_errors(tmp_path, text, message):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(SlmError, match=message):
        load_recipe(f)


def test_output_may_not_be_an_input_even_with_force(pair, tmp_path):
    before = tensors(pair[0])
    for out in (pair[0], pair[0] / "sub", pair[0].parent):
        with pytest.raises(SlmError, match="the input"):
            merge(MergeRecipe(method="linear", models=[str(pair[0]), str(pair[1])]), out, force=True)
    assert all(torch.equal(before[k], v) for k, v in tensors(pair[0]).items())
