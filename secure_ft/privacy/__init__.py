"""Sample-level differential privacy: DP-SGD around the one training loop, and its accounting.

What the guarantee means
------------------------
A model trained with (ε, δ)-differential privacy reveals little about any single training
example: for any two training sets that differ in one example, every outcome of training is
at most e^ε times more likely with one than with the other, except with probability δ.
ε is the privacy *budget* a team states and defends; δ must be well below 1/N for N training
examples (by default δ = min(1/(10 N), 1e-5)).

How DP-SGD gets it (Abadi et al. 2016), and where each piece lives
-------------------------------------------------------------------
1. **Poisson sampling** – each example joins a step's logical batch independently with
   probability q = batch_size / N (Opacus' ``DPDataLoader``; `sharded_poisson` for several
   processes). Logical batches larger than ``max_physical_batch_size`` are split and
   accumulated.
2. **Per-sample clipping** – every example's gradient is scaled down to L2 norm ≤ C
   (``max_grad_norm``). The per-sample norms come from ``grad_sample_mode``
   (`per_sample_gradients` picks one): ``bookkeeping`` (`bookkeeping_clipping`: norms and the
   clipped sum from one backward pass; the default wherever it supports the model), Opacus'
   ``hooks``, ``ghost`` or ``functorch``.
3. **Gaussian noise** – N(0, σ²C²) is added to the sum of clipped gradients; σ is the
   ``noise_multiplier``, either given or calibrated (`accountants.calibrate_noise`) so that
   ``training.epochs`` end exactly at ``target_epsilon``.
4. **Accounting** – an accountant picked by name from `accountants` (``prv`` by default)
   composes the steps into ε. Its history (`accountant_history`) is saved with every
   checkpoint, restored on resume, and written to the run directory beside ``privacy.json``;
   `recompute` checks a finished run's stated ε against it (``secure-ft privacy RUN_DIR``).

Why small data favours few trainable parameters
-----------------------------------------------
DP noise is added to every trainable coordinate alike, and Adam moves every coordinate by
about the learning rate per step, noise or not. With a thousand examples this favours few
trainable parameters (LoRA), large logical batches (less noise per step) and a separate,
larger learning rate for the freshly initialised head (``training.head_learning_rate``,
applied by the loop itself). Measured recipes and their figures live with the benchmarks
(``bench/``) and the README, not here.

Across runs
-----------
Privacy loss composes over every model trained on the same records. `budget_ledger` keeps
one entry per run attempt per data fingerprint (written ahead while DP training runs, closed
with the exact history however it ends); `budget_composition` composes all of them with the
PRV accountant into the data set's cumulative ε, which pre-flight and the gate hold against
the policy's ``privacy.max_dataset_epsilon``.

Modules: `engine` (`PrivateEngine`), `accountants`, `accountant_history`, `recompute`,
`budget_ledger`, `budget_composition`, `bookkeeping_clipping`, `per_sample_gradients`,
`sharded_poisson`.
"""
