"""The house: imports run one way (sample.py -> pipeline -> engines / report / models -> utils), no circles, and no
room holds more than about a third of the code."""
from __future__ import annotations

import ast
import os

from tests.conftest import ROOT

# A package may import its own modules and those of a lower floor; packages on one floor never import each other.
FLOORS = {"utils": 0, "models": 1, "engines": 1, "report": 1, "pipeline": 2, "sample": 3, "benchmarks": 3}
# The product's rooms; tests/ is left out, so that more tests never count against the layout.
ROOMS = ("models", "engines", "pipeline", "report", "utils", "benchmarks")


def python_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


def project_modules() -> dict[str, str]:
    """Dotted module name -> path, for sample.py and every package of the project."""
    modules = {"sample": os.path.join(ROOT, "sample.py")}
    for package in FLOORS:
        folder = os.path.join(ROOT, package)
        if os.path.isdir(folder):
            for path in python_files(folder):
                name = os.path.splitext(os.path.basename(path))[0]
                modules[package if name == "__init__" else f"{package}.{name}"] = path
    return modules


def imports_of(path: str, known: dict[str, str]) -> set[str]:
    """The project modules `path` imports, at any depth in the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in known)
    return found


def graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def package(module: str) -> str:
    return module.split(".")[0]


def test_imports_only_go_down():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            a, b = package(module), package(target)
            if a != b and FLOORS[b] >= FLOORS[a]:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports that run up or sideways: {upward}"


def test_no_circles_between_modules():
    edges = graph()
    done, active, circles = set(), [], []

    def visit(node):
        if node in active:
            circles.append(active[active.index(node):] + [node])
            return
        if node in done:
            return
        active.append(node)
        for target in sorted(edges[node]):
            visit(target)
        active.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
    assert not circles, f"import circles: {circles}"


def test_no_room_holds_more_than_a_third_of_the_code():
    lines = {room: sum(len(open(p).readlines()) for p in python_files(os.path.join(ROOT, room))) for room in ROOMS}
    lines["sample.py"] = len(open(os.path.join(ROOT, "sample.py")).readlines())
    total = sum(lines.values())
    big = {room: f"{n / total:.0%}" for room, n in lines.items() if n > 0.35 * total}
    assert not big, f"rooms over 35 % of {total} lines: {big}"
