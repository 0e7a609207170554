"""The package's layers, read from the source with `ast` (nothing is imported).

cli -> run (driver) -> online -> actors (roles) -> engines / sync / training -> algorithms / data: a lower layer
never imports an upper one, so a backend or the weight transport never knows which actor hosts
it. Every import counts, the ones inside functions too (they run as surely, only later).

An edge is the module an import names (`from selfsteer.sync import buckets` is an edge to
`selfsteer.sync.buckets`; `from selfsteer.sync.buckets import Bucket` too). The parent packages
Python executes first are not edges: a package's `__init__` re-exporting its own submodule
(`toy/__init__.py` -> `toy.model`) would otherwise close a loop with every submodule. Modules
loaded by name at run time (the rounds and losses of `algorithms.registry`) are checked
separately: each must exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "selfsteer"
LOWER = ("selfsteer.engines", "selfsteer.algorithms", "selfsteer.data", "selfsteer.sync")
UPPER = ("selfsteer.actors", "selfsteer.run", "selfsteer.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported selfsteer module, line) for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return [(name, line) for name, line in found if _within(name, ("selfsteer",))]


def _resolve(name: str) -> str:
    """The module itself, or the longest module prefix of `name` (`import a.b.c` of a package path)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    if name not in MODULES:
        raise AssertionError(f"import of {name!r}: no such module under selfsteer/")
    return name


GRAPH = {m: {(_resolve(n), line) for n, line in _imports(m, p)} for m, p in MODULES.items()}


def test_the_walker_sees_top_level_and_function_level_imports():
    # Guards the two tests below against passing on an empty graph.
    assert any(t == "selfsteer.actors.roles" for t, _ in GRAPH["selfsteer.run.driver"])  # module level
    assert any(t == "selfsteer.sync.buckets" for t, _ in GRAPH["selfsteer.engines.hf_engine"])  # inside a method
    assert any(t == "selfsteer.actors.syncer" for t, _ in GRAPH["selfsteer.actors.roles"])  # inside a function


@pytest.mark.parametrize("lower", LOWER)
def test_lower_layers_never_import_actors_driver_roles_or_cli(lower):
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
           for m, edges in GRAPH.items() if _within(m, (lower,))
           for t, line in sorted(edges) if _within(t, UPPER)]
    assert not bad, "\n".join(bad)


# The stated order, highest first: a module never imports one of a higher layer than its own.
ORDER = ("selfsteer.cli", "selfsteer.run", "selfsteer.online", "selfsteer.actors")
# The upward imports there are, each named with why it stays (module, imported module): any other
# upward import fails, and so does an entry here that no longer imports (remove it).
UPWARD_ALLOWED = {
    # run.metrics' PhaseTimer and weighted_mean: small helpers every round uses; they could move down.
    ("selfsteer.online.common", "selfsteer.run.metrics"): "weighted_mean of the trainer ranks' results",
    ("selfsteer.online.sipo", "selfsteer.run.metrics"): "PhaseTimer, weighted_mean",
    ("selfsteer.online.sso", "selfsteer.run.metrics"): "PhaseTimer",
    ("selfsteer.online.self_contrast", "selfsteer.run.metrics"): "PhaseTimer",
    ("selfsteer.online.sepo", "selfsteer.run.metrics"): "PhaseTimer",
    # The round's checkpoint goes through the driver's resumable state (save_round).
    ("selfsteer.online.common", "selfsteer.run.checkpoint"): "save_round after the HF checkpoint",
    # Start-up probes (scoring.probe_kernels, the trainer ranks' too) report a feature turned off the run's way.
    ("selfsteer.actors.scoring", "selfsteer.run.startup_checks"): "fallback",
    ("selfsteer.actors.trainer", "selfsteer.run.startup_checks"): "fallback (ZeRO-3 sliced load not taken)",
    # prepare_inputs is the driver's start-up, not an actor's: prompt count, start-up warnings, and
    # SIPO's stage-0 models, all before any actor starts.
    ("selfsteer.actors.inputs", "selfsteer.run.preflight"): "check_prompt_count",
    ("selfsteer.actors.inputs", "selfsteer.run.startup_checks"): "startup_warnings",
    ("selfsteer.actors.inputs", "selfsteer.online.sipo_models"): "stage0",
}


def _layer(module: str):
    return next((i for i, prefix in enumerate(ORDER) if _within(module, (prefix,))), None)


def _upward() -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for m, edges in GRAPH.items():
        for t, line in sorted(edges):
            if _layer(m) is not None and _layer(t) is not None and _layer(t) < _layer(m):
                found.setdefault((m, t), []).append(line)
    return found


def test_cli_run_online_actors_import_only_downward_but_the_listed():
    found = _upward()
    new = [f"{MODULES[m].relative_to(ROOT)}:{lines[0]} imports {t}, a higher layer ({' -> '.join(ORDER)})"
           for (m, t), lines in sorted(found.items()) if (m, t) not in UPWARD_ALLOWED]
    assert not new, "\n".join(new)
    stale = sorted(set(UPWARD_ALLOWED) - set(found))
    assert not stale, f"listed in UPWARD_ALLOWED but no longer imported (remove them): {stale}"


def test_no_import_cycle_inside_selfsteer():
    edges = {m: sorted({t for t, _ in e if t != m}) for m, e in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _class(path: str) -> ast.ClassDef | None:
    module, name = path.split(":")
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def test_every_method_names_a_round_class_and_a_loss_that_exist():
    """The registry names rounds and losses by dotted path (imported when used): each must exist,
    rounds with the interface the driver calls, losses in algorithms/ (a loss never imports upward)."""
    from selfsteer.algorithms.registry import METHODS
    from selfsteer.config.schema import ALGOS

    assert set(METHODS) == set(ALGOS)
    for name, spec in METHODS.items():
        module, cls_name = spec.round.split(":")
        assert module in MODULES and _within(module, ("selfsteer.online",)), (name, spec.round)
        cls = _class(spec.round)
        assert cls is not None, f"{spec.round}: no such class"
        methods = {n.name: [a.arg for a in n.args.args] for n in cls.body if isinstance(n, ast.FunctionDef)}
        assert methods.get("__init__") == ["self", "cfg", "roles", "inputs"], spec.round
        assert methods.get("run") == ["self", "r"], spec.round
        assert methods.get("close") == ["self"], spec.round
        loss_module, fn = spec.loss.split(":")
        assert _within(loss_module, ("selfsteer.algorithms",)) and loss_module in MODULES, (name, spec.loss)
        tree = ast.parse(MODULES[loss_module].read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.FunctionDef) and n.name == fn for n in tree.body), spec.loss


def test_the_top_of_the_package_holds_packages_not_loose_modules():
    loose = sorted(m for m, p in MODULES.items() if m.count(".") == 1 and p.name != "__init__.py")
    assert not loose, f"loose modules at the top of selfsteer/ (put them in a package): {loose}"
    assert "selfsteer.run.driver" in MODULES and "selfsteer.cli.main" in MODULES
