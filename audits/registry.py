"""Audits by the name the policy uses.

Each audit module registers one function `AuditContext -> AuditResult` under its policy
name. The gate and the report only ever see `AuditResult`s, so adding an audit means adding
a module here and a section to the policy, nothing else.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from typing import Callable

from audits.context import AuditContext
from audits.result import AuditResult
from secure_ft.errors import SecureFTError

AuditFunction = Callable[[AuditContext], AuditResult]

# policy name -> module that registers it (imported lazily: textattack is slow to import)
_MODULES = {
    "performance": "audits.performance",
    "robustness": "audits.robustness",
    "fairness": "audits.fairness",
    "privacy": "audits.privacy",
}
_REGISTRY: dict[str, AuditFunction] = {}

log = logging.getLogger(__name__)


def register(name: str) -> Callable[[AuditFunction], AuditFunction]:
    def decorator(function: AuditFunction) -> AuditFunction:
        _REGISTRY[name] = function
        return function

    return decorator


def available_audits() -> list[str]:
    return sorted(_MODULES)


def get_audit(name: str) -> AuditFunction:
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise KeyError(f"unknown audit {name!r}; known audits: {', '.join(available_audits())}")
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def run_audit(name: str, context: AuditContext) -> AuditResult:
    """Run one audit; an audit that cannot run returns a failed result with the reason."""
    try:
        return get_audit(name)(context)
    except SecureFTError as error:
        return AuditResult.failed_to_run(name, str(error))
    except KeyError as error:
        return AuditResult.failed_to_run(name, str(error))
    except Exception as error:  # an audit bug must fail the audit, never pass silently
        log.error("audit %s crashed:\n%s", name, traceback.format_exc())
        return AuditResult.failed_to_run(name, f"internal error: {type(error).__name__}: {error}")
