"""The import graph keeps data flowing one way: a test parses every import and fails on a forbidden arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from secure_ft.records import policy as policy_module
from secure_ft.records.policy import Requirement, Setting, Threshold

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("secure_ft", "audits", "federated")

# Layers, lowest first: a module may import its own layer and the ones below it, never one above.
# Within a layer packages may import each other (DP-SGD wraps the training loop; the loop's
# multiplicity uses DP clipping); circles between modules are refused by the test further down.
LAYERS = (
    ("foundation", ("secure_ft", "secure_ft.errors")),  # the package root only: its lazy exports import nothing
    ("records and identity", ("secure_ft.records",)),
    ("text and models", ("secure_ft.text",)),
    ("training and privacy", ("secure_ft.training", "secure_ft.privacy")),
    ("federated learning", ("federated", "secure_ft.deploy")),
    ("audits", ("audits",)),
    ("gate and provenance", ("secure_ft.release",)),
    ("serving", ("secure_ft.serving",)),
    ("pipeline", ("secure_ft.pipeline",)),
    ("commands", ("secure_ft.commands",)),
    ("entry points", ("secure_ft.cli", "secure_ft.distributed")),  # `secure-ft`, `torchrun -m secure_ft.distributed`
)

# the core: run records, text and models, training and DP never import the layers that use them
CORE = ("secure_ft.errors", "secure_ft.records", "secure_ft.text", "secure_ft.training", "secure_ft.privacy")
TOP = ("secure_ft.cli", "secure_ft.commands", "secure_ft.pipeline", "secure_ft.release", "secure_ft.serving",
       "audits", "federated")
TRAINING = ("secure_ft.training.training_loop", "secure_ft.training.central_run", "secure_ft.privacy.engine",
            "secure_ft.distributed", "federated")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports anywhere in its body (also inside functions)."""
    files = {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(resolve(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(resolve(f"{node.module}.{alias.name}") or resolve(node.module) for alias in node.names)
        graph[name] = {target for target in targets if target and target != name}
    return graph


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_the_core_never_imports_the_layers_above_it():
    forbidden = [(source, target) for source, targets in import_graph().items() if _within(source, CORE)
                 for target in targets if _within(target, TOP)]
    assert forbidden == []


def test_audits_never_import_training():
    forbidden = [(source, target) for source, targets in import_graph().items() if _within(source, ("audits",))
                 for target in targets if _within(target, TRAINING)]
    assert forbidden == []


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer declaring `module` (the longest declared prefix wins), or None if none declares it.

    The package root ``secure_ft`` is matched by its exact name only, so an undeclared subpackage
    has no layer instead of silently sitting at the bottom.
    """
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            exact_only = prefix == "secure_ft"
            if (module == prefix or (not exact_only and module.startswith(prefix + "."))) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def upward_arrows(graph: dict[str, set[str]], layers=LAYERS) -> list[tuple[str, str]]:
    """Every import whose target sits in a higher layer than its source (undeclared modules: see the test below)."""
    levels = {name: layer_of(name, layers) for name in set(graph).union(*graph.values())}
    return sorted((source, target) for source, targets in graph.items() for target in targets
                  if None not in (levels[source], levels[target]) and levels[target] > levels[source])


def test_every_module_has_a_layer():
    assert [name for name in import_graph() if layer_of(name) is None] == []


def test_no_module_imports_from_a_higher_layer():
    arrows = upward_arrows(import_graph())
    assert arrows == [], "\n".join(f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} "
                                   f"({LAYERS[layer_of(target)][0]})" for source, target in arrows)


def test_the_layer_check_can_fail():
    # an upward arrow is found, however deep inside its package; arrows down or within a layer are not
    graph = {"secure_ft.records.config": {"secure_ft.training.central_run", "secure_ft.errors"},
             "secure_ft.training.probe": {"secure_ft.privacy.engine", "secure_ft.text.models"},
             "secure_ft.privacy.engine": {"secure_ft.training.training_loop"},
             "audits.gate": {"secure_ft.pipeline.report.document"},
             "secure_ft.errors": set(), "secure_ft": set()}
    assert upward_arrows(graph) == [("audits.gate", "secure_ft.pipeline.report.document"),
                                    ("secure_ft.records.config", "secure_ft.training.central_run")]
    # the declared order is what decides: swap two layers and a real arrow of the graph points up
    swapped = list(LAYERS)
    records, text = swapped.index(LAYERS[1]), swapped.index(LAYERS[2])
    swapped[records], swapped[text] = swapped[text], swapped[records]
    assert ("secure_ft.text.models", "secure_ft.records.config") in upward_arrows(import_graph(), tuple(swapped))
    # the root matches only itself: an undeclared subpackage has no layer
    assert layer_of("secure_ft") == 0 and layer_of("secure_ft.newthing") is None


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return circles


def test_the_import_graph_has_no_circle():
    assert find_circles(import_graph()) == []


def test_the_checks_can_fail():
    # a circle is found, and imports inside functions are part of the graph
    assert find_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    graph = import_graph()
    assert "secure_ft.privacy.accountants" in graph["secure_ft.privacy.engine"]
    assert "secure_ft.pipeline.report" in graph["secure_ft.pipeline.main_job"]  # imported inside run_pipeline


@pytest.mark.parametrize("section", [policy_module.PerformancePolicy, policy_module.RobustnessPolicy,
                                     policy_module.FairnessPolicy, policy_module.PrivacyPolicy])
def test_every_policy_field_declares_what_it_does(section):
    # a field with no declaration would be ignored by the checks; one with two is ambiguous
    for name, field in section.model_fields.items():
        kinds = [meta for meta in field.metadata if isinstance(meta, (Threshold, Requirement, Setting, policy_module.Wording))]
        assert len(kinds) == 1, f"{section.__name__}.{name} declares {kinds}"


def test_a_threshold_checks_its_declared_metric_not_its_name():
    from audits.policy_checks import threshold_checks

    section = policy_module.PerformancePolicy(min_macro_f1=0.5)
    checks = threshold_checks(section, {"accuracy": 0.9, "macro_f1": 0.4})
    assert [(check.name, check.actual, check.passed) for check in checks] == [("macro_f1", 0.4, False)]
    # judged on the pessimistic bound when the section asks for it
    section = policy_module.PerformancePolicy(min_macro_f1=0.5, use_ci_bound=True)
    checks = threshold_checks(section, {"macro_f1": {"value": 0.6, "ci_lower": 0.45, "ci_upper": 0.7}}, ci_level=0.95)
    assert checks[0].actual == 0.45 and not checks[0].passed and "lower 95% CI bound" in checks[0].note
