"""The house's rules (docs/ARCHITECTURE.md), read off the source: every import statement of ddmd_lab,
those inside functions included, walked with ``ast``.  Nothing is imported, so this runs in a second."""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddmd_lab"

# Layers from the bottom; a module imports only its own layer or lower.  config sits just above core: it
# reads the YAML files (experiments/) into typed sections that every layer above takes.
LAYERS = {
    "errors": 0, "util": 0,
    "core": 1,
    "config": 2,
    "backbones": 3,
    "data": 4, "method": 4, "parallel": 4,
    "eval": 5, "report": 5,
    "scales": 6,
    "planning": 7,
    "training": 8,
    "finetune": 9,
    "commands": 10,
    "__main__": 11,
}
LIGHTNING = {"pytorch_lightning", "lightning", "lightning_fabric"}
CORE_ALLOWED = {"torch", "numpy", "__future__"} | set(sys.stdlib_module_names)
# report/ reads run folders; it never runs a network, so it imports nothing that holds, builds or calls one
# (method/tau_bins, the diagnostics' numpy sums, it may read)
REPORT_FORBIDDEN = ("ddmd_lab.backbones", "ddmd_lab.scales", "ddmd_lab.training", "ddmd_lab.finetune",
                    "ddmd_lab.method.update", "ddmd_lab.method.gan", "ddmd_lab.method.diagnostics",
                    "ddmd_lab.core.rollout", "ddmd_lab.planning", "torch")
EVAL_FORBIDDEN = ("ddmd_lab.scales", "ddmd_lab.training", "ddmd_lab.report", "ddmd_lab.commands")
MAX_TOP_FILES = 5
DEFERRED = "deferred"  # the word a function-level import's comment must carry, saying what heavy import it defers


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


class Import:
    def __init__(self, module: str, node: ast.stmt, target: str, names: list[str], in_function: bool, comment: str):
        self.module, self.line, self.target, self.names = module, node.lineno, target, names
        self.in_function, self.comment = in_function, comment

    def __repr__(self):
        return f"{MODULES[self.module].relative_to(PACKAGE.parent)}:{self.line} imports {self.target}"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not MODULES[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[Import]:
    source = MODULES[module].read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            targets = []
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{a.name}"
                targets.append((sub, []) if sub in MODULES else (base, [a.name]))
        else:
            continue
        comment = " ".join(lines[max(node.lineno - 2, 0): node.end_lineno])
        for target, names in targets:
            out.append(Import(module, node, target, names, id(node) in inside, comment))
    return out


IMPORTS = {m: _imports(m) for m in MODULES}


def _internal(target: str) -> str | None:
    """The ddmd_lab module an import names (the longest known prefix), or None for a third-party one."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _all_imports():
    return [imp for imps in IMPORTS.values() for imp in imps]


def test_every_module_has_a_layer_and_the_top_stays_small():
    unknown = sorted({_layer(m) for m in MODULES} - set(LAYERS) - {"__init__"})
    assert not unknown, f"ddmd_lab/{unknown} belong to no layer: add them to docs/ARCHITECTURE.md and LAYERS"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_FILES, f"{len(top)} files at the top of ddmd_lab/: {top}"


def test_imports_point_down():
    up = [f"{imp} ({_layer(imp.module)} -> {_layer(_internal(imp.target))})" for imp in _all_imports()
          if _internal(imp.target) and _layer(imp.module) != "__init__"
          and LAYERS.get(_layer(_internal(imp.target)), 0) > LAYERS.get(_layer(imp.module), 0)]
    assert not up, "imports pointing up:\n" + "\n".join(up)


def test_only_main_imports_commands():
    bad = [repr(imp) for imp in _all_imports() if (_internal(imp.target) or "").startswith("ddmd_lab.commands")
           and _layer(imp.module) not in ("commands", "__main__")]
    assert not bad, "\n".join(bad)


def test_core_is_pure_torch():
    bad = [repr(imp) for imp in _all_imports() if _layer(imp.module) == "core"
           and not _internal(imp.target) and imp.target.split(".")[0] not in CORE_ALLOWED]
    bad += [repr(imp) for imp in _all_imports() if _layer(imp.module) == "core" and _internal(imp.target)
            and _layer(_internal(imp.target)) not in ("core", "errors")]
    assert not bad, "core/ imports only torch, numpy, the standard library (and errors):\n" + "\n".join(bad)


def test_only_training_and_parallel_know_lightning():
    bad = [repr(imp) for imp in _all_imports() if imp.target.split(".")[0] in LIGHTNING
           and _layer(imp.module) not in ("training", "parallel")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer,forbidden", [("eval", EVAL_FORBIDDEN), ("report", REPORT_FORBIDDEN),
                                             ("data", ("ddmd_lab.eval",))])
def test_what_a_layer_never_imports(layer, forbidden):
    bad = [repr(imp) for imp in _all_imports() if _layer(imp.module) == layer
           and any(imp.target == f or imp.target.startswith(f + ".") for f in forbidden)]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    edges = defaultdict(set)
    for imp in _all_imports():
        target = _internal(imp.target)
        if target and target != imp.module:
            edges[imp.module].add(target)
    circles, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                circles.append(sorted(scc))

    for m in list(MODULES):
        if m not in index:
            visit(m)
    assert not circles, "import circles: " + "; ".join(" ".join(c) for c in circles)


def test_imports_sit_at_the_top_unless_they_defer_a_heavy_dependency():
    bad = [repr(imp) for imp in _all_imports() if imp.in_function and DEFERRED not in imp.comment.lower()]
    stdlib = [repr(imp) for imp in _all_imports() if imp.in_function
              and imp.target.split(".")[0] in sys.stdlib_module_names]
    assert not bad, f"imports inside functions without a '# {DEFERRED}: <what>' comment:\n" + "\n".join(bad)
    assert not stdlib, "the standard library is never heavy; import it at the top:\n" + "\n".join(stdlib)


def test_no_private_name_crosses_a_module():
    bad = [f"{imp}: {name}" for imp in _all_imports() if _internal(imp.target)
           for name in imp.names if name.startswith("_") and not name.startswith("__")]
    assert not bad, "\n".join(bad)


def _constants(module: str) -> dict[str, object]:
    out = {}
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper() and not name.startswith("_"):
                try:
                    out[name] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return out


def test_no_constant_is_defined_twice():
    """A name in capitals bound to the same literal in two modules is one constant written twice (EVAL_SEED
    was 1234 in four); per-scale tables of the same name but other values (TEACHER_DEFAULTS) are not."""
    seen = defaultdict(list)
    for m in MODULES:
        for name, value in _constants(m).items():
            seen[(name, repr(value))].append(m)
    twice = {k[0]: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"constants defined twice: {twice}"
