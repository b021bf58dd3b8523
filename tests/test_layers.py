"""The package layout: layers only point down (carebot <- data_tools <- pretrain <- alignment <- eval <- launch),
no import cycles between modules, no module over the size limit, and the installed wheel holds exactly the
stage packages. Imports are read with `ast`, so a lazy import inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["carebot", "data_tools", "pretrain", "alignment", "eval", "launch"]
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for top in LAYERS:
        for p in sorted((REPO / top).rglob("*.py")):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, m, set(mods)) for m, p in mods.items()}


def layer(mod: str) -> int:
    return LAYERS.index(mod.split(".")[0])


def test_imports_point_down_the_layers():
    bad = [f"{m} -> {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m)]
    assert not bad, "imports pointing up the layer order " + " <- ".join(LAYERS) + ":\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    # a package's __init__ re-exporting its own submodules is not a cycle between modules
    g = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in g.items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_layer_checker_sees_violations(tmp_path):
    """The checker itself: an upward import and a relative import are both resolved."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from launch.slurm import main\nfrom . import io\n")
    assert imports_of(p, "carebot.x", {"launch.slurm", "carebot.io", "carebot"}) == {"launch.slurm", "carebot.io"}


@pytest.mark.parametrize("top", LAYERS)
def test_modules_stay_small(top):
    big = {str(p.relative_to(REPO)): n for m, p in modules().items() if m.split(".")[0] == top
           and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_the_wheel_holds_exactly_the_stage_packages(tmp_path):
    """Build the wheel as pip would and read its top level: the stage packages and `carebot`, never `tests`."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "whl"), str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    (whl,) = (tmp_path / "whl").glob("*.whl")
    names = zipfile.ZipFile(whl).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(LAYERS)
    # the data files the stages read at run time travel with it
    assert any(n.startswith("pretrain/recipes/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("launch/templates/") for n in names)
    assert any(n.startswith("data_tools/curate/wordlists/") for n in names)
