"""slm.recipe: the one YAML + key=value parser every verb's recipe goes through."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from slm.errors import SlmError
from slm.recipe import apply_overrides, build, load_recipe, read_mapping, save_recipe


@dataclass
class Toy:
    name: str  # required: no default
    lr: float = 1e-3  # a float field: "2e-4" (YAML 1.1 text) is taken as the number
    steps: int = 1  # an int field
    weights: dict = field(default_factory=dict)  # a nested mapping, reachable by dotted overrides
    models: list = field(default_factory=list)  # paths or {model: PATH}
    base: str | None = None  # a path


def test_yaml_then_overrides_then_extra(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: a\nlr: 2e-4\nweights: {code: 1.5, math: 1.0}\n")
    r = load_recipe(Toy, f, ["steps=3", "weights.math=0.5", "lr=1e-2"], extra={"name": "b", "base": None})
    assert r == Toy(name="b", lr=1e-2, steps=3, weights={"code": 1.5, "math": 0.5})
    assert isinstance(load_recipe(Toy, f).lr, float) and load_recipe(Toy, f).lr == 2e-4
    assert load_recipe(Toy, None, ["name=x", "steps=4"], defaults=lambda d: {"lr": 0.5}).lr == 0.5


def test_paths_resolve_against_the_recipe_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "r.yaml"
    f.write_text("name: a\nbase: m0\nmodels: [m1, {model: m2, weight: 3}, {weight: 1}]\n")
    r = load_recipe(Toy, f, ["base=/abs/m0"], paths=("base", "models[].model"))
    assert r.base == "/abs/m0"
    assert r.models == [str(tmp_path / "sub" / "m1"), {"model": str(tmp_path / "sub" / "m2"), "weight": 3},
                        {"weight": 1}]


def test_one_line_errors(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(SlmError,
                       match=r"r\.yaml holds a list, not a mapping: write one `key: value` per line"):
        read_mapping(f)
    f.write_text("name: [unclosed\n")
    with pytest.raises(SlmError, match="not valid YAML"):
        read_mapping(f)
    with pytest.raises(SlmError, match="not found"):
        read_mapping(tmp_path / "nope.yaml")
    with pytest.raises(SlmError,
                       match=r"unknown recipe key `stepz` \(did you mean `steps`\?\); valid keys: base, lr"):
        build(Toy, {"name": "a", "stepz": 1})
    with pytest.raises(SlmError, match="the recipe needs `name`"):
        build(Toy, {})
    with pytest.raises(SlmError, match="lr='fast' is not a number"):
        build(Toy, {"name": "a", "lr": "fast"})
    with pytest.raises(SlmError, match="is not key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(SlmError, match="`name` is not a mapping"):
        apply_overrides({"name": "a"}, ["name.x=1"])
    assert apply_overrides({}, ["a=", "b=[1, 2]", "c=x: y: z"]) == {"a": "", "b": [1, 2], "c": "x: y: z"}


def test_saved_recipe_loads_back_the_same(tmp_path):
    r = Toy(name="a", lr=3e-4, steps=7, weights={"code": 2.0}, models=["m"])
    path = save_recipe(tmp_path, r)
    assert path == tmp_path / "recipe.yaml"
    assert load_recipe(Toy, path) == r
    assert path.read_text().startswith("name: a\nlr: ")  # field order, not sorted


@pytest.mark.parametrize("override, message", [
    ("steps=2.9", r"steps=2\.9 is not a whole number"),
    ("steps=29e-1", r"steps=2\.9 is not a whole number"),  # YAML 1.1 text, converted, still not whole
    ("lr=.inf", r"lr=inf is not a finite number"),
    ("lr=nan", r"lr=nan is not a finite number"),
    ("steps=true", r"steps=True is not a number"),
    ("lr=[1]", r"lr=\[1\] is not a number"),
    ("lr=", r"lr='' is not a number"),
])
def test_numbers_must_be_finite_and_whole_where_whole(override, message):
    with pytest.raises(SlmError, match=message):
        build(Toy, apply_overrides({"name": "a"}, [override]))


def test_whole_floats_and_number_text_are_converted():
    t = build(Toy, apply_overrides({"name": "a"}, ["steps=3.0", "lr=2e-4"]))
    assert (t.steps, t.lr) == (3, 2e-4) and isinstance(t.steps, int)
