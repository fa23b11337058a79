"""The project's dependencies run one way (STYLE.md, habit 10): kernels <- trainer <- harness CLIs.

Every import statement counts, function-level ones included: an import placed inside a function to
dodge a cycle is still a cycle. The graph is read from the source with `ast`, nothing is imported.
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "harness", "benchmarks")
TRAINER = "train_gpt"
TRAINERS = (TRAINER, "optim")  # the trainer is train_gpt.py and its optimizers, optim.py
# The harness modules the trainer may import: each imports no harness module outside this set.
LEAVES = {"harness.runlog", "harness.overrides", "harness.hardware", "harness.snapshot", "harness.tracks",
          "harness.shards", "harness.files"}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for the trainer and every module of the project's packages."""
    modules = {name: root / f"{name}.py" for name in TRAINERS if (root / f"{name}.py").exists()}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (`from a import b` counts a.b if it is one)."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import harness.run.x` -> harness.run
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def dependency_problems(root: Path) -> list[str]:
    """Every cycle (one is enough to fail) and every edge against the one-way rule, as lines."""
    graph = import_graph(root)
    problems = []
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        problems.append("import cycle: " + " -> ".join(e.args[1]))
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            top = target.split(".")[0]
            if module.startswith("kernels") and top in ("harness", *TRAINERS, "benchmarks"):
                problems.append(f"{module} imports {target}: kernels/ imports neither trainer nor harness")
            if module.startswith("harness") and top in TRAINERS:
                problems.append(f"{module} imports {target}: no harness module imports the trainer")
            if module.startswith("harness") and top == "benchmarks":
                problems.append(f"{module} imports {target}: the harness does not depend on benchmarks")
            if (module in TRAINERS or module in LEAVES) and top == "harness" and target not in LEAVES | {"harness"}:
                problems.append(f"{module} imports {target}: the trainer and the leaf harness modules import only "
                                f"leaves ({', '.join(sorted(LEAVES))})")
    return problems


def test_the_project_has_no_cycle_and_no_edge_against_the_rule():
    assert dependency_problems(REPO) == []


def test_the_graph_sees_the_trainers_imports():
    graph = import_graph(REPO)
    assert {"kernels.attention", "kernels.norm", "kernels.newton_schulz", "harness.tracks", "harness.runlog"} <= graph[TRAINER]
    assert "harness.records" in graph["harness.run"]
    assert "optim" in graph[TRAINER]


def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    # a cycle hidden by a function-level import
    ({"harness/__init__.py": "", "harness/a.py": "from harness import b\n",
      "harness/b.py": "def f():\n    from harness.a import g\n"}, "import cycle"),
    # a relative import closing the cycle
    ({"harness/__init__.py": "", "harness/a.py": "from . import b\n", "harness/b.py": "from .a import g\n"},
     "import cycle"),
    ({"kernels/__init__.py": "", "kernels/k.py": "import harness.runlog\n", "harness/__init__.py": "",
      "harness/runlog.py": ""}, "kernels/ imports neither"),
    ({"harness/__init__.py": "", "harness/compare.py": "def f():\n    from train_gpt import Config\n",
      "train_gpt.py": ""}, "no harness module imports the trainer"),
    ({"harness/__init__.py": "", "harness/run.py": "", "train_gpt.py": "from harness.run import x\n"},
     "import only leaves"),
    ({"harness/__init__.py": "", "harness/run.py": "", "harness/runlog.py": "import harness.run\n"},
     "import only leaves"),
    # optim.py is part of the trainer: the same rules hold for it
    ({"harness/__init__.py": "", "harness/verify.py": "import optim\n", "optim.py": ""},
     "no harness module imports the trainer"),
    ({"harness/__init__.py": "", "harness/run.py": "", "optim.py": "from harness.run import x\n"},
     "import only leaves"),
    ({"optim.py": "import train_gpt\n", "train_gpt.py": "import optim\n"}, "import cycle"),
])
def test_a_planted_cycle_or_back_edge_is_found(tmp_path, files, expected):
    problems = dependency_problems(_plant(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_a_clean_planted_tree_passes(tmp_path):
    files = {"kernels/__init__.py": "", "kernels/k.py": "import torch\n", "harness/__init__.py": "",
             "harness/runlog.py": "import json\n", "harness/run.py": "from harness import runlog\n",
             "train_gpt.py": "from kernels.k import f\nfrom harness.runlog import w\n"}
    assert dependency_problems(_plant(tmp_path, files)) == []
