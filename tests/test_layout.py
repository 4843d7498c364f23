"""The house: imports run one way (sample.py -> pipeline -> engines / report -> models / dataset -> utils), no circles,
no room holds more than about a third of the code, and no file or function outgrows a reading."""
from __future__ import annotations

import ast
import os

from tests.conftest import ROOT

# A package may import its own modules and those of a lower floor; packages on one floor never import each other.
FLOORS = {"utils": 0, "dataset": 1, "models": 1, "engines": 2, "report": 2, "pipeline": 3, "sample": 4, "benchmarks": 4}
# The product's rooms; tests/ is left out, so that more tests never count against the layout.
ROOMS = ("models", "dataset", "engines", "pipeline", "report", "utils", "benchmarks")
# utils/ is the ground floor: what every room stands on, nothing of the domain.
GROUND = {"__init__.py", "errors.py", "files.py", "device.py", "timing.py", "signals.py", "streams.py", "builds.py",
          "trace.py"}  # trace.py: the timers' span recorder (--trace), under timing.py
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


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


def product_files() -> list[str]:
    return [os.path.join(ROOT, "sample.py")] + [p for room in ROOMS for p in python_files(os.path.join(ROOT, room))]


def test_no_file_or_function_outgrows_a_reading():
    long_files, long_functions = [], []
    for path in product_files():
        text = open(path).read()
        name = os.path.relpath(path, ROOT)
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}:{node.name} ({length} lines)")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_utils_holds_only_the_ground_floor():
    found = {f for f in os.listdir(os.path.join(ROOT, "utils")) if f.endswith(".py")}
    assert found <= GROUND, f"domain modules in utils/: {sorted(found - GROUND)}; give them their room"
