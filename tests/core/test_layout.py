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


def _module_of(f: Path) -> str:
    for pkg, folder in FOLDERS.items():
        if f.is_relative_to(folder) and not (pkg == "slm" and any(f.is_relative_to(x) for x in
                                                                   list(FOLDERS.values())[1:])):
            parts = pkg.split(".") + list(f.relative_to(folder).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f)


def import_graph() -> dict[str, set[str]]:
    """module → the project's modules it imports, at module level or inside a function."""
    files = {f for pkg, folder in FOLDERS.items() for f in folder.rglob("*.py")}
    mods = {_module_of(f): f for f in files}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for pkg, folder in FOLDERS.items():
        for f, imported in _imports(folder, pkg):
            m = _module_of(f)
            if m.split(".")[:2] != pkg.split(".")[:2] and pkg != "slm":
                continue
            for cand in (imported, imported.rsplit(".", 1)[0]):
                if cand in mods and cand != m and not mods[cand].name == "__init__.py":
                    graph[m].add(cand)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_module_that_imports_it_back():
    """Counting imports inside functions too: a function-level import does not hide a cycle."""
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_reports_decode_no_figure_names():
    """slm/report reads figures' fields: no regular expression over names (render.py's only cut SVG
    markup)."""
    for f in sorted((ROOT / "slm" / "report").glob("*.py")):
        tree = ast.parse(f.read_text())
        uses_re = any(isinstance(n, ast.Import)
                      and any(a.name == "re" for a in n.names) for n in ast.walk(tree))
        assert not uses_re or f.name == "render.py", f"{f.name} imports re"
    render = ast.parse((ROOT / "slm" / "report" / "render.py").read_text())
    users = {fn.name for fn in ast.walk(render) if isinstance(fn, ast.FunctionDef)
             for n in ast.walk(fn) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "re"}
    assert users <= {"svg_of", "render_report"}


def test_a_function_level_import_says_why():
    """Imports inside functions only defer a heavy or optional dependency (or break a cycle), and say so in a
    comment on the line or just above its block of imports; everything else is imported at the top of the
    module."""
    bare = []
    for folder in FOLDERS.values():
        for f in sorted(folder.rglob("*.py")):
            lines = f.read_text().split("\n")
            for fn in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for n in ast.walk(fn):
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        k = n.lineno - 2  # up through the imports just above it, to the line before them
                        while k > 0 and lines[k].strip().startswith(("import ", "from ")):
                            k -= 1
                        if "#" not in lines[n.lineno - 1] and not lines[k].strip().startswith("#"):
                            bare.append(f"{f.relative_to(ROOT)}:{n.lineno}")
    assert bare == []


def test_the_graph_sees_function_level_imports():
    g = import_graph()
    assert "slm.gguf" in g["slm.spec"] and "slm.quant.llamacpp_ops" in g["slm.profiling.ops"]
