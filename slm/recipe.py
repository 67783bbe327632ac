"""One parser for every recipe (train, merge; later ablate and profile): a YAML mapping, `key=value`
overrides, the caller's typed dataclass, and the resolved recipe saved next to the output.

After torchtune's `config/_parse.py` (a YAML file merged with a command-line dotlist) and litgpt's dataclass
arguments, without OmegaConf: an override's value is read as YAML (`lr=1e-3`, `trainable=[5, 11]`), a dotted
key sets one entry of a nested mapping (`mixture.code=1.5`), and an unknown key is a one-line error naming the
closest valid key and listing them all. Each verb keeps its own dataclass (fields, defaults, validation); this
module only turns text into keyword arguments for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from slm.errors import SlmError
from slm.hub import resolve_model
from slm.record import atomic_write_text

T = TypeVar("T")
RECIPE_FILE = "recipe.yaml"  # the resolved recipe beside a run and in each of its checkpoints


def read_mapping(path: Path | str) -> dict:
    """The top-level mapping of a YAML recipe file (an empty file is an empty recipe)."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"recipe {p} not found: pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SlmError(f"recipe {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SlmError(f"recipe {p} holds a {type(data).__name__}, not a mapping: write one `key: value` per "
                       "line")
    return data


def parse_value(text: str) -> Any:
    """A value as YAML reads it (numbers, booleans, [lists], {maps}); text YAML cannot read stays text."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Set each `key=value` (dotted keys reach into nested mappings) in `data`, in order; returns `data`."""
    for o in overrides:
        if "=" not in o:
            raise SlmError(f"override {o!r} is not key=value: write e.g. steps=200")
        key, value = o.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = data
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SlmError(f"override {o!r}: `{k}` is not a mapping, so it has no `.{leaf}`: set "
                               f"`{k}=VALUE`")
        node[leaf] = parse_value(value)
    return data


def _map_keys(data: dict, keys: Iterable[str], fn: Callable[[Any], Any]) -> dict:
    """Apply `fn` to the values under `keys`. A key `models[].model` names a list whose items are a value or
    a mapping with the value under `model`. Returns `data`."""
    for key in keys:
        name, _, item = key.partition("[].")
        if not item:
            if data.get(name) is not None:
                data[name] = fn(data[name])
            continue
        if isinstance(data.get(name), list):
            data[name] = [({**m, item: fn(m[item])} if item in m else m) if isinstance(m, dict) else fn(m)
                          for m in data[name]]
    return data


def resolve_paths(data: dict, base: Path, keys: Iterable[str]) -> dict:
    """Make the paths under `keys` absolute, relative to `base` (the recipe's folder); see `_map_keys` for the
    key syntax. Returns `data`."""
    def absolute(p):
        return str((base / p).resolve()) if isinstance(p, (str, Path)) and not Path(p).is_absolute() else p

    return _map_keys(data, keys, absolute)


def resolve_models(data: dict, base: Path, keys: Iterable[str]) -> dict:
    """Turn each model under `keys` that is a Hugging Face Hub id (and not a path under `base`) into its HF
    cache folder (slm.hub). Returns `data`."""
    def model(p):
        if isinstance(p, str) and not (base / p).exists():
            return resolve_model(p)
        return p

    return _map_keys(data, keys, model)


def build(cls: type[T], data: dict) -> T:
    """`cls(**data)` for a recipe dataclass: unknown and missing keys are one-line errors, and a number that
    YAML 1.1 read as text (`2e-4` has no dot) is taken as the number a float/int field obviously wants; a
    plain float/int field must hold a finite number, and an int field a whole one (see `_number`)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, sorted(fields), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise SlmError(f"unknown recipe key `{k}`{hint}; valid keys: {', '.join(sorted(fields))}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SlmError(f"the recipe needs `{missing[0]}`: add `{missing[0]}: VALUE` to the YAML or "
                       f"`{missing[0]}=VALUE`")
    return cls(**{k: _number(k, _name(k, v, _type_name(fields[k])), _type_name(fields[k]))
                  for k, v in data.items()})


_TEXT = ("str", "str | None", "Optional[str]", "str | Path", "str | Path | None")


def _name(key: str, value: Any, type_name: str) -> Any:
    """A text field (a name, a path) holding a YAML list or mapping is refused here, in one line, before the
    dataclass or a lookup by that name meets an unhashable value."""
    if type_name in _TEXT and isinstance(value, (list, dict)):
        kind = "list" if isinstance(value, list) else "mapping"
        raise SlmError(f"{key}={value!r} is a {kind}, not a single value: write one name or path, e.g. "
                       f"{key}=VALUE")
    return value


def _type_name(f: dataclasses.Field) -> str:
    # postponed annotations: text
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")


def _number(key: str, value: Any, type_name: str) -> Any:
    """The value of a plain `float` / `int` field as that type: text and whole floats (`steps=3.0`) converted,
    and anything else (`steps=2.9`, `lr=.inf`, `lr=[1]`, `steps=true`, an empty value) a one-line error."""
    if type_name not in ("float", "int"):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SlmError(f"{key}={value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SlmError(f"{key}={value!r} is not a number: write e.g. "
                       f"{key}={1 if type_name == 'int' else 0.5}")
    if not math.isfinite(value):
        raise SlmError(f"{key}={value} is not a finite number: give a finite value")
    if type_name == "float":
        return float(value)
    if value != int(value):
        raise SlmError(f"{key}={value} is not a whole number: {key} counts, e.g. {key}={int(value)}")
    return int(value)


def load_recipe(cls: type[T], path: Path | str | None = None, overrides: Iterable[str] = (), *,
                extra: dict | None = None, defaults: Callable[[dict], dict] | None = None,
                paths: Iterable[str] = (), models: Iterable[str] = ()) -> T:
    """The one way a verb reads its recipe: the YAML file (optional), then `overrides`, then `extra` (the
    verb's own flags; None values skipped), with `models` that are Hub ids resolved to the HF cache and
    `paths` made relative to the recipe file, over `defaults(data)` (e.g. a preset the recipe names), into a
    validated `cls`."""
    data = read_mapping(path) if path else {}
    apply_overrides(data, overrides or ())
    data.update({k: v for k, v in (extra or {}).items() if v is not None})
    if models:
        resolve_models(data, Path(path).parent if path else Path.cwd(), models)
    if path and paths:
        resolve_paths(data, Path(path).parent, paths)
    if defaults is not None:
        data = {**defaults(data), **data}
    return build(cls, data)


def save_recipe(folder: Path | str, recipe: dict | Any, name: str = RECIPE_FILE) -> Path:
    """Write the resolved recipe (a dict or a dataclass) as YAML into `folder`, in field order; returns the
    file. Loading it back with `load_recipe` gives the same recipe."""
    d = dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else dict(recipe)
    out = Path(folder) / name
    atomic_write_text(out, yaml.safe_dump(d, sort_keys=False))
    return out
