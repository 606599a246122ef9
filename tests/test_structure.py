"""The package's shape: stage deps in dvc.yaml match what each stage imports, imports run one way, no cycle.

Imports are read from the source (ast), function-level ones included, so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "polycolor"

# Files a stage reads without importing them: MLflow executes pyfunc_entry.py when it loads the package it writes.
READ_NOT_IMPORTED = {"package": ["src/polycolor/serving/pyfunc_entry.py"]}

# Layers, lowest first. A module may import its own layer's modules (no cycle) and any lower layer, never a higher
# one. The plumbing at the bottom imports only stdlib/third-party code and other plumbing.
LAYERS = [
    {"errors", "paths", "fileio", "signals"},
    {"colours"},
    {"config", "images"},
    {"tracking"},
    {"data"},
    {"nn"},
    {"painting"},  # the post-processing: training never imports it, so changing it does not retrain
    {"training", "evaluation"},
    {"monitoring"},  # what the faces call to log, and the reference profile: beside the painting, below serving
    {"serving"},
    {"bench", "cli", "report", "stack", "tuning", "monitor", "monitor_bench"},
]


def module_file(name: str) -> Path | None:
    """The file of a dotted polycolor module name, or None when `name` is not a module of the package."""
    parts = name.split(".")
    if parts[0] != "polycolor":
        return None
    base = SRC.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_files(path: Path) -> set[Path]:
    """polycolor module files that `path` imports anywhere in its body (package __init__ files excluded)."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from polycolor.data import ayna` imports the submodule ayna; `from polycolor.x import f`, module x
            names = [f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")]
            names = names or [node.module]
        for name in names:
            f = module_file(name)
            if f is not None and f.name != "__init__.py":
                found.add(f)
    return found


def closure(roots: list[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        f = todo.pop()
        for g in imported_files(f):
            if g not in seen:
                seen.add(g)
                todo.append(g)
    return seen


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_script(stage: str) -> str:
    return re.search(r"python (stages/\S+\.py)", STAGES[stage]["cmd"]).group(1)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_match_imports(stage: str) -> None:
    spec = STAGES[stage]
    script = stage_script(stage)
    extra = READ_NOT_IMPORTED.get(stage, [])
    used = {rel(f) for f in closure([ROOT / script, *(ROOT / e for e in extra)])} | set(extra)
    declared = {d for d in spec["deps"] if d.startswith("src/")}
    assert script in spec["deps"], f"{stage}: its script {script} is not a dep"
    assert not used - declared, f"{stage} imports but does not declare: {sorted(used - declared)}"
    assert not declared - used, f"{stage} declares but does not import: {sorted(declared - used)}"


# For each stage, what its import closure must never reach (a folder ends in "/"): an edit there never reruns it. The
# train stage stays clear of what comes after the model (serving, the post-processing, evaluation and the lookup of
# the evaluation run) and of their params sections, so none of them retrains; the data stages stay clear of models,
# MLflow and the sections after the data. Only check, evaluate and package read the whole of params.yaml.
OTHER_SECTIONS = ["config/evaluation.py", "config/paint.py", "config/serving.py", "config/params.py"]
NEVER_REACHED = {
    "check": ["nn/", "training/", "serving/", "painting/", "evaluation/"],
    "ingest": ["nn/", "training/", "serving/", "painting/", "evaluation/", "tracking/", "config/training.py",
               *OTHER_SECTIONS],
    "augment": ["nn/", "training/", "serving/", "painting/", "evaluation/", "tracking/", "config/training.py",
                *OTHER_SECTIONS],
    "train": ["serving/", "painting/", "evaluation/", "tracking/eval_runs.py", "config/data.py", *OTHER_SECTIONS],
    "evaluate": ["training/", "serving/"],
    "package": ["training/"],
}


def stage_closure(stage: str) -> set[str]:
    """Repo-relative files the stage's script imports, directly or not."""
    return {rel(f) for f in closure([ROOT / stage_script(stage)])}


def test_every_stage_has_its_never_list() -> None:
    assert sorted(NEVER_REACHED) == sorted(STAGES), "a stage without a NEVER_REACHED entry (or an entry for no stage)"


@pytest.mark.parametrize("stage", sorted(NEVER_REACHED))
def test_stage_never_reaches(stage: str) -> None:
    never = [f"src/polycolor/{p}" for p in NEVER_REACHED[stage]]
    reached = sorted(f for f in stage_closure(stage) for n in never if f == n or (n.endswith("/") and f.startswith(n)))
    assert not reached, f"{stage} reaches modules it must never import (an edit there would rerun it): {reached}"


def package_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py")


def layer_of(path: Path) -> int:
    top = path.relative_to(PKG).parts[0].removesuffix(".py")
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{rel(path)} is in no layer of test_structure.LAYERS: place it")


def test_imports_run_downward_only() -> None:
    wrong = [f"{rel(f)} -> {rel(g)}" for f in package_modules() for g in imported_files(f) if layer_of(g) > layer_of(f)]
    assert not wrong, "imports that point up a layer:\n" + "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {f: imported_files(f) for f in package_modules()}
    state: dict[Path, int] = {}  # 1: on the current path, 2: done

    def visit(f: Path, path: list[Path]) -> None:
        state[f] = 1
        for g in graph.get(f, ()):
            if state.get(g) == 1:
                cycle = path[path.index(g):] + [g] if g in path else [f, g]
                raise AssertionError("import cycle: " + " -> ".join(rel(p) for p in cycle))
            if g not in state:
                visit(g, path + [g])
        state[f] = 2

    for f in graph:
        if f not in state:
            visit(f, [f])


def test_package_inits_hold_no_code() -> None:
    """The deps test leaves __init__ files out of each closure: that is only right while they run nothing."""
    for init in PKG.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert not code, f"{rel(init)} holds code; add it to the stage deps or move it into a module"


def test_training_never_imports_the_painting_code() -> None:
    """The post-processing can change without retraining: nothing training runs reaches polycolor.painting."""
    roots = sorted((PKG / "training").glob("*.py")) + [ROOT / "stages/train.py"]
    reached = sorted(rel(f) for f in closure(roots) if f.is_relative_to(PKG / "painting"))
    assert not reached, f"training reaches the painting code: {reached}"
