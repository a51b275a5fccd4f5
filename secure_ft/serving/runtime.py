"""The serving process's model runtime: torch's thread count and a lean import of transformers.

`secure-ft serve` calls :func:`import_model_runtime` once, after the bundle verified and before
the model is loaded. Start-up is mostly imports, and transformers pulled in two optional
integrations a text classifier never runs: scikit-learn (≈1.3 s on 2 busy cores, for assisted
generation's candidate model) and SciPy (≈0.3 s, for the loss of object-detection models).
Before its model code is imported, transformers is told those two packages are absent, in
this process only; a BERT-style classifier loads and computes exactly as before. If a
transformers release renames the private switches, nothing breaks: start-up is just slower
again (`tests/test_serve_process.py` notices).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# transformers.utils.import_utils switches of integrations that inference never uses
_UNUSED_INTEGRATIONS = ("_sklearn_available", "_scipy_available")


def import_model_runtime(threads: int | None = None) -> None:
    """Import torch (with `threads` intra-op threads; None: torch's default) and transformers, leanly."""
    import torch

    if threads is not None:
        # one process per core set: oversubscribed OpenMP threads spin-wait (≈30× slower per forward on a busy box)
        torch.set_num_threads(threads)
    import transformers.utils.import_utils as integrations

    for switch in _UNUSED_INTEGRATIONS:
        if isinstance(getattr(integrations, switch, None), bool):
            setattr(integrations, switch, False)
        else:
            log.debug("transformers has no %s switch; its integration is imported as usual", switch)
