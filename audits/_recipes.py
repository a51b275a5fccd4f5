"""Attack recipes by name: TextAttack's stock recipes, the offline `embedding-swap`, and the
label-preserving variants of the three families (`deepwordbug-lp`, `pwws-lp`,
`embedding-swap-lp`: :mod:`audits._label_preserving`).

Stock names are TextAttack's own (``textattack attack --recipe NAME``). Offline, with the
resources :mod:`audits.offline_resources` provides, these run: deepwordbug, pwws, pruthi,
input-reduction, leap, and embedding-swap. The others need downloads (word vectors, hub
models, a TF-hub encoder, taggers) and fail fast with the reason unless the user allows
downloads. :func:`describe_attack` spells out each recipe's goal, transformation, search and
constraints so the report can say what "robust" meant.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from secure_ft.errors import AuditError
from secure_ft.records.config import RobustnessAuditConfig

EMBEDDING_SWAP = "embedding-swap"


def stock_recipes() -> dict[str, str]:
    """TextAttack's recipe names → class paths."""
    from textattack.attack_args import ATTACK_RECIPE_NAMES

    return dict(ATTACK_RECIPE_NAMES)


def known_recipes() -> list[str]:
    from audits._label_preserving import LABEL_PRESERVING

    return sorted({*stock_recipes(), EMBEDDING_SWAP, *LABEL_PRESERVING})


def build_attack(name: str, model_wrapper, settings: RobustnessAuditConfig, cache_dir: Path,
                 validity=None, resources_root: Path | None = None):
    """A TextAttack ``Attack`` for recipe `name` on `model_wrapper`, with the audit's query budget.

    `validity` (the policy's ``robustness.validity``; None = its defaults) and `resources_root`
    (where the independent sentence encoder is assembled) serve the label-preserving recipes.

    Raises
    ------
    AuditError
        Unknown recipe, or the recipe cannot be built here (missing resource, download refused,
        incompatible model); the message carries the reason.
    """
    from audits._label_preserving import LABEL_PRESERVING

    if name in LABEL_PRESERVING:
        from audits._label_preserving import build_label_preserving
        from secure_ft.records.policy import ValidityConstraints

        rules = validity if validity is not None else ValidityConstraints()
        root = Path(resources_root) if resources_root is not None else Path(cache_dir).parent
        builder = lambda: build_label_preserving(name, model_wrapper, rules, settings.embedding_swap,  # noqa: E731
                                                 root, cache_dir)
    elif name == EMBEDDING_SWAP:
        from audits._embedding_swap import build_embedding_swap

        builder = lambda: build_embedding_swap(model_wrapper, settings.embedding_swap, cache_dir)  # noqa: E731
    elif name in stock_recipes():
        module_name, class_name = stock_recipes()[name].rsplit(".", 1)
        recipe = getattr(importlib.import_module(module_name), class_name)
        builder = lambda: recipe.build(model_wrapper)  # noqa: E731
    else:
        raise AuditError(
            f"audits.robustness.recipes: unknown recipe {name!r}; choose from {', '.join(known_recipes())}"
        )
    try:
        attack = builder()
    except AuditError as error:
        raise AuditError(f"recipe {name}: {error}") from None
    except Exception as error:  # a stock recipe's own failure (missing hub model, wrong model type, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise AuditError(f"recipe {name} cannot run here: {type(error).__name__}: {first_line}") from None
    attack.goal_function.query_budget = settings.query_budget
    attack.goal_function.batch_size = settings.batch_size
    return attack


def describe_attack(attack) -> dict:
    """What the attack does, as plain strings (no example text)."""
    constraints = [*attack.pre_transformation_constraints, *attack.constraints]
    return {
        "goal_function": describe_component(attack.goal_function),
        "transformation": describe_component(attack.transformation),
        "search_method": describe_component(attack.search_method),
        "constraints": [describe_component(constraint) for constraint in constraints],
    }


def describe_component(component) -> str:
    """``ClassName(key=value, ...)`` from TextAttack's ``extra_repr_keys``; large values summarised."""
    keys = component.extra_repr_keys() if hasattr(component, "extra_repr_keys") else []
    parts = []
    for key in keys:
        value = getattr(component, key, None)
        parts.append(f"{key}={_short(value)}")
    if "StopwordModification" in (cls.__name__ for cls in type(component).__mro__):  # also StopwordsInAnyCase
        parts.append(f"stopwords={len(component.stopwords)} words")
    inner = getattr(component, "transformations", None)
    if inner:
        parts.append("of=[" + ", ".join(describe_component(t) for t in inner) + "]")
    return f"{type(component).__name__}({', '.join(parts)})"


def _short(value) -> str:
    if isinstance(value, (set, frozenset, list, tuple, dict)) and len(value) > 8:
        return f"<{len(value)} items>"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (str, int, bool, type(None), set, frozenset, list, tuple, dict)):
        return repr(value)
    return type(value).__name__
