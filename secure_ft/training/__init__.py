"""Training: from a run config to a trained model in a run directory, central or on several processes.

Every training, plain, private (`secure_ft.privacy`) or federated (`federated`), runs through
the one loop in ``training_loop``; ``torchrun -m secure_ft.distributed`` (an entry point, beside
``secure_ft/cli.py``) runs it on several processes.

``central_run``        one central run: config → run directory holding the trained model
``training_loop``      the one fine-tuning loop (``fit``)
``accumulation``       gradient accumulation for non-private runs
``multiplicity``       augmentation multiplicity under DP-SGD: one clipped gradient per example
``transfer_choice``    ``model.transfer: auto``: probe, LoRA or full fine-tuning from data size and ε
``probe``              the frozen-encoder probe: embeddings computed once, a linear head trained on them
``probe_recipe``       the probe's fixed recipe (no tuning on private data)
``robust_training``    robustness-focused training: the front end and the augmented training set
``finished_run``       a finished run directory read back, to be audited, gated and exported
``effective_config``   what a run of a config file will train with, and where each value comes from
``console``            what the command line prints about a finished training run

May import: `secure_ft.records`, `secure_ft.text` and `secure_ft.privacy` (same layer: DP-SGD
wraps this loop). Never the audits, the gate, release or serving. Exports nothing itself:
``from secure_ft.training.central_run import train_run``; `secure_ft` re-exports the public names.
"""
