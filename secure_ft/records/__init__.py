"""Run records: what one run is given, what it writes down, and how a model folder is named.

A run starts from a config (with its data source and policy) and leaves a run directory whose
every file the later steps read back: the ledger, the checkpoints, the model folder and its
digest. The modules here know those inputs and that layout; nothing here trains, audits or signs.

``config``                  the pydantic run config (YAML in and out, the built-in default)
``robust_training_config``  its ``training.robustness`` section
``data``                    load, validate, split and fingerprint a labelled text set (``builtin:NAME``
                            reads ``secure_ft/records/demo_data/``)
``policy``                  the export policy: which audits a model must pass, each threshold
                            (shipped policies in ``secure_ft/records/policies/``)
``technical_documentation`` the ``card:`` statements and what a policy requires of them
``run_directory``           the run directory's layout: the one module that knows its file names
``run_ledger``              the append-only, hash-chained log of a run
``checkpoint``              training checkpoints, written atomically and verified on load
``model_identity``          a model folder's identity: one SHA-256 over every file
``bundle_snapshot``         a bundle read once into memory, so what is checked is what is used
``atomic_files``            writes a reader sees whole or not at all
``offline_environment``     the process environment every entry point sets first (offline, quiet)

May import: `secure_ft.errors` and third-party libraries only (the lowest layer;
``tests/test_architecture.py`` checks it). Exports nothing itself: import the module you need,
e.g. ``from secure_ft.records.config import RunConfig``; `secure_ft` re-exports the public names.
"""
