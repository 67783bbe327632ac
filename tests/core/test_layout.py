"""The design's arrows hold: the core imports none of train/quant/profiling (only slm/cli dispatches to them),
quant and train never import each other, profiling reaches llama.cpp only through slm.quant, and slm/report
renders without importing a step."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package → folder (pyproject's package-dir)
FOLDERS = {"slm": ROOT / "slm", "slm.train": ROOT / "train", "slm.quant": ROOT / "quant",
           "slm.profiling": ROOT / "profiling"}


def _imports(folder: Path, package: str):
    """(file, imported module) for every import in the package, relative imports resolved."""
    for f in sorted(folder.rglob("*.py")):
        parts = package.split(".") + list(f.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield f, a.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[: len(parts) - node.level + (f.name == "__init__.py")]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                yield f, mod
                for a in node.names:  # `from slm import quant` style
                    yield f, f"{mod}.{a.name}"


def _offenders(package: str, forbidden: tuple[str, ...], skip: str | None = None,
               only: str | None = None) -> list[str]:
    folder = FOLDERS[package]
    return sorted({f"{f.relative_to(folder.parent)} imports {m}" for f, m in _imports(folder, package)
                   if any(m == x or m.startswith(x + ".") for x in forbidden)
                   and not (skip and f.is_relative_to(folder / skip))
                   and (only is None or f.is_relative_to(folder / only))})


@pytest.mark.parametrize("package, forbidden, skip", [
    ("slm", ("slm.train", "slm.quant", "slm.profiling"), "cli"),  # the core is the ground floor
    ("slm.quant", ("slm.train", "slm.profiling", "slm.cli"), None),
    ("slm.train", ("slm.quant", "slm.profiling", "slm.cli"), None),
    ("slm.profiling", ("slm.train", "slm.cli", "llama_cpp"), None),  # llama.cpp only through slm.quant's room
])
def test_import_arrows(package, forbidden, skip):
    assert _offenders(package, forbidden, skip) == []


def test_reports_render_without_importing_a_step():
    assert _offenders("slm", ("slm.surgery", "slm.info", "slm.io"), only="report") == []


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "bad.py").write_text("from slm.quant.llamacpp import LlamaCpp\nfrom . import sibling\n")
    monkeypatch.setitem(FOLDERS, "slm", pkg)
    got = _offenders("slm", ("slm.quant",), None)
    assert len(got) == 2 and all("imports slm.quant" in g for g in got)
