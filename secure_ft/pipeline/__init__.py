"""The pipeline: one run from config to bundle, and what it does before and after.

``main_job``         the main job: pre-flight → train → audits → gate → report → export when it passes
``preflight``        can this run pass its policy at all? checked before anything trains
``report``           the compliance report (``audit_report.json`` and its HTML view)
``mlflow_tracking``  MLflow as a view of a finished run directory (uploaded afterwards)
``mlflow_registry``  an MLflow model registry that only ever receives gated models

May import every layer below it: `secure_ft.records`, `secure_ft.text`, `secure_ft.training`,
`secure_ft.privacy`, `federated`, `secure_ft.deploy`, `audits`, `secure_ft.release` and
`secure_ft.serving` (the registry's pyfunc flavour). Only `secure_ft.commands` and
`secure_ft.cli` import it. Exports nothing itself, so that ``import secure_ft.pipeline.preflight``
stays cheap: ``from secure_ft.pipeline.main_job import run_pipeline``.
"""
