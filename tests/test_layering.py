"""The import rules of docs/design (DESIGN.md's layout), read from the code's own imports.

- `mqt/` imports neither `ray`, `pipeline`, `jobs` nor `bench`: the model needs no Ray.
- `pipeline/` never imports `jobs` or `bench`; `jobs/` never imports `bench`.
- A job never imports another job (`jobs.cli`, the command, is not a job).
- No import cycles among the project's modules, counting imports inside functions too.
- An import inside a function is only of an optional heavy dependency (`LAZY`), with a
  comment on its line, or above it or above the run of imports it is in, saying why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mqt", "pipeline", "jobs")
# heavy or optional where they are imported: Ray, DeepSpeed, plotting, the transformers stack
# (the cost model and the scheduler import mqt without it), the data extra, fsspec's other URLs
LAZY = ("ray", "deepspeed", "matplotlib", "transformers", "tokenizers", "easy_vqa", "sklearn",
        "skimage", "fsspec")
SHARED_JOB_MODULES = {"jobs.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = project_files()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of the file; for
    `from a import b` where a.b is a project module, that module."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                subs = [f"{child.module}.{a.name}" for a in child.names]
                found.extend((s, child.lineno, in_function) for s in subs if s in MODULES)
                if not all(s in MODULES for s in subs):
                    found.append((child.module, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def project_imports(name: str) -> set[str]:
    return {m for m, _, _ in imports(MODULES[name]) if m in MODULES}


def test_the_packages_are_found():
    assert {"mqt.model", "pipeline.engine", "jobs.annotate", "jobs.cli"} <= set(MODULES)


@pytest.mark.parametrize("package, forbidden", [
    ("mqt", {"ray", "pipeline", "jobs", "bench"}),
    ("pipeline", {"jobs", "bench"}),
    ("jobs", {"bench"}),
])
def test_layers_import_only_downwards(package, forbidden):
    bad = [f"{name}:{line} imports {m}" for name, path in MODULES.items()
           if top(name) == package for m, line, _ in imports(path) if top(m) in forbidden]
    assert not bad, "\n".join(bad)


def test_no_job_imports_another_job():
    jobs = {n for n in MODULES if top(n) == "jobs"} - SHARED_JOB_MODULES - {"jobs"}
    bad = [f"{name} imports {m}" for name in jobs for m in project_imports(name) if m in jobs]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {name: project_imports(name) - {name} for name in MODULES}
    # a package's __init__ importing its own modules is not a cycle through them
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def reason_above(lines: list[str], i: int) -> bool:
    """Whether a comment stands above line i, or above the run of imports that holds it."""
    while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
        i -= 1
    return i > 0 and lines[i - 1].strip().startswith("#")


def test_imports_inside_functions_are_heavy_optional_dependencies_with_a_reason():
    bad = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        for m, line, in_function in imports(path):
            if not in_function:
                continue
            said = "#" in lines[line - 1] or reason_above(lines, line - 1)
            if top(m) not in LAZY or not said:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {m}"
                           + ("" if top(m) in LAZY else f" (only {', '.join(LAZY)})"))
    assert not bad, "\n".join(bad)
