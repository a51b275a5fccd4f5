"""Run configuration: pydantic models of one run, YAML in and out, and the built-in default.

The defaults of every field together form the built-in demo: differentially private training
of the packaged MiniLM encoder (``transfer: auto``, which on the demo's 1,070 rows is the
frozen-encoder probe) on the bundled CFPB complaint narratives, audited
for robustness, fairness and privacy against the shipped regulated-use policy.

A config file only needs the fields it changes. Unknown keys and bad values raise
:class:`~secure_ft.errors.ConfigError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from secure_ft.errors import ConfigError
from secure_ft.records.robust_training_config import RobustTrainingConfig

BUILTIN_DATASET = "builtin:cfpb"
# columns of the canonical frame `secure_ft.records.data` builds from the user's file; a group column of the
# same name would overwrite one (a group column `text` would replace the text the model reads)
RESERVED_COLUMNS = ("row", "text", "label", "label_name")


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    validation_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of rows for validation")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of rows held out for audits")


class DataConfig(_Section):
    source: str = Field(
        BUILTIN_DATASET,
        description="CSV / JSONL / Parquet file, a `datasets` hub name, or builtin:cfpb / builtin:mtsamples",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf"] = Field(
        "auto", description="file format; auto = from the file extension"
    )
    hf_split: str = Field("train", description="split to load when source is a `datasets` hub name")
    text_column: str = Field("text", description="column holding the input text")
    label_column: str = Field("product_label", description="column holding the class label")
    group_columns: list[str] = Field(
        default_factory=lambda: ["older_american", "servicemember", "state"],
        description="sensitive attributes kept for fairness audits; never fed to the model",
    )
    derived_group_columns: list[str] = Field(
        default_factory=list,
        description="group columns that are derived proxies rather than ground truth (labelled so in reports)",
    )
    labels: list[str] | None = Field(
        None, description="the declared label set; rows with other labels are an error. null = infer"
    )
    small_classes: Literal["drop", "error"] = Field(
        "drop", description="what to do with classes too small to split: drop them (logged) or fail"
    )
    min_class_count: int = Field(20, ge=3, description="classes with fewer rows count as too small to split")
    max_rows: int | None = Field(None, gt=0, description="stratified subsample to this many rows (speed)")
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _group_columns_are_other_columns(self) -> "DataConfig":
        clashes = []
        for column in self.group_columns:
            if column == self.text_column:
                clashes.append(f"{column!r} is data.text_column: the text is not a group attribute; remove it")
            elif column == self.label_column:
                clashes.append(f"{column!r} is data.label_column: the label is not a group attribute; remove it")
            elif column in RESERVED_COLUMNS:
                clashes.append(f"{column!r} is a name secure-ft uses for its own columns "
                               f"({', '.join(RESERVED_COLUMNS)}); rename that column in the data file "
                               f"(e.g. {column}_group) and list the new name")
        if clashes:
            raise ValueError("data.group_columns: " + "; ".join(clashes))
        return self


class ModelConfig(_Section):
    name_or_path: str = Field(
        "default",
        description="local model folder, hub name, or `default` (the packaged all-MiniLM-L6-v2 encoder)",
    )
    revision: str | None = Field(None, description="hub revision (commit) to pin when loading by name")
    transfer: Literal["auto", "probe", "lora", "full", "top_k"] = Field(
        "auto", description="what trains: probe = frozen encoder, a linear head on its cached mean-pooled, "
        "L2-normalised sentence embeddings; lora = LoRA adapters + head; full = every weight; top_k = the top k "
        "encoder layers + head; auto = chosen from the training rows N and the privacy target "
        "(secure_ft.training.transfer_choice): DP with ε ≤ 8 (or a fixed noise_multiplier): probe below 7,500 rows, else lora; "
        "DP with ε > 8: lora; non-private: probe below 1,000 rows, full from 20,000, lora between"
    )
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = Field(
        None, description="null = query and value projections of every attention layer"
    )
    top_k_layers: int = Field(2, ge=0, description="with transfer: top_k, how many top encoder layers train")
    # 64: on the finance demo (complaints of ~200 words) the DP probe with the spelling front end and
    # augmentation scored val accuracy 0.765 / macro-F1 0.642 at 64 tokens against 0.765 / 0.627 at 128,
    # while every forward pass — the robustness audit makes tens of thousands — costs about a quarter
    max_length: int = Field(64, ge=8, le=4096, description="maximum sequence length in tokens (the model reads "
                            "the first max_length tokens of each text; the robustness audit attacks that part)")
    head_init: Literal["auto", "label_names", "random"] = Field(
        "auto", description="how the classification head starts: label_names = each class's row is the unit-length "
        "embedding of its name (a zero-shot classifier; the names are public, no training row is read; "
        "transfer: probe only); random = the transformers initialisation; auto = label_names for transfer: probe "
        "when the names are words (not 0/1 or LABEL_3), else random (secure_ft.text.label_name_head)")
    # cls is the default because it is what the built-in demo was measured to pass its audits with (1,070
    # rows, DP): mean pooling scored val accuracy 0.700 / macro-F1 0.34 against 0.709 / 0.41 and failed the
    # DeepWordBug robustness check; on SST-2 (67,349 rows, DP ε = 8) mean beat cls by 1.7 points.
    pooling: Literal["cls", "mean", "mean_normalized", "auto"] = Field(
        "cls", description="what the classifier reads: cls = the [CLS] state (tanh([CLS]) for sentence-transformers "
        "exports, whose BERT pooler never trained); mean = the mean of the token states (BERT-style models; what "
        "sentence-transformers models such as the default were trained for — better with tens of thousands of rows, "
        "see bench/privacy_utility.py); mean_normalized = that mean scaled to unit length; auto = the pooling a "
        "sentence-transformers export declares, else cls. transfer: probe always reads mean_normalized (or mean "
        "when set), whatever this says"
    )

    encoder_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="what runs the frozen encoder of transfer: probe: onnx = the encoder and its pooler "
        "exported once to ONNX (cached per user by the base model's digest) and run by ONNX Runtime in training, "
        "audits and serving — the graph is saved in the model folder and covered by its digest; torch = the "
        "transformers model; auto = onnx for transfer: probe, torch otherwise (LoRA, full and top_k train the "
        "encoder, so they always run on torch)")
    quantize: Literal["none", "int8"] = Field(
        "none", description="with encoder_backend onnx: int8 = dynamic int8 quantization of the exported encoder's "
        "weights (faster on CPUs, slightly different embeddings; see bench/encoder.py for agreement); none = fp32")

    @model_validator(mode="after")
    def _onnx_needs_frozen_encoder(self) -> "ModelConfig":
        if self.encoder_backend == "onnx" and self.transfer not in ("probe", "auto"):
            raise ValueError(f"model.encoder_backend: onnx runs a frozen encoder, but transfer: {self.transfer} "
                             "trains it; use transfer: probe or encoder_backend: torch (or auto)")
        if self.quantize != "none" and self.encoder_backend == "torch":
            raise ValueError(f"model.quantize: {self.quantize} quantizes the ONNX encoder; set encoder_backend: onnx "
                             "(or auto with transfer: probe), or quantize: none")
        return self

    def resolved_encoder_backend(self) -> str:
        """``"onnx"`` or ``"torch"``: what runs the encoder of this (transfer-resolved) config."""
        if self.encoder_backend != "auto":
            return self.encoder_backend
        return "onnx" if self.transfer == "probe" else "torch"

    @model_validator(mode="after")
    def _label_name_head_needs_probe(self) -> "ModelConfig":
        if self.head_init == "label_names" and self.transfer not in ("probe", "auto"):
            raise ValueError(f"model.head_init: label_names needs transfer: probe (the head reads unit-length sentence "
                             f"embeddings there); with transfer: {self.transfer} use head_init: auto or random")
        return self


class TrainingConfig(_Section):
    """The fine-tuning loop (`secure_ft.training.training_loop`).

    The defaults are the DP recipe of LoRA / full fine-tuning (measured in `secure_ft.privacy.engine`):
    DP-SGD wants large logical batches (less noise per step) and a few more epochs; a
    non-private run does as well or better with batch 32 (see examples/cfpb-plain.yaml).
    With ``model.transfer: probe`` (or ``auto`` resolving to it) every key of the fixed probe
    recipe that the config leaves unset (optimizer, momentum, learning rates, epochs, batch
    size, warm-up, early stopping) comes from `secure_ft.training.probe_recipe`; keys the config sets win.
    """

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=1, description="logical batch size (expected size under Poisson sampling)")
    eval_batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(5e-3, gt=0, description="learning rate (adapters / encoder / probe head)")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or sgd with `momentum` (the probe recipe's choice, secure_ft.training.probe_recipe)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="with optimizer: sgd, its momentum")
    head_learning_rate: float | None = Field(
        5e-2, gt=0, description="learning rate of the freshly initialised classification head; null = learning_rate"
    )
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["linear", "constant"] = Field(
        "linear", description="learning rate after warm-up: linear decay to 0 over the run, or constant"
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping of non-private runs")
    max_physical_batch_size: int | None = Field(
        None, ge=1, description="non-private runs: largest batch computed at once; larger logical batches are "
        "accumulated in pieces (same step, less memory); null = one pass. DP runs use privacy.max_physical_batch_size")
    early_stopping_patience: int | None = Field(
        2, ge=1, description="epochs without validation macro-F1 gain before stopping; null = never"
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps (always at each epoch end)"
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; null = torch default")
    robustness: RobustTrainingConfig = Field(
        default_factory=RobustTrainingConfig,
        description="robustness-focused training (issue #16): augmentation copies and a typo-correcting front end")


class PrivacyConfig(_Section):
    """Sample-level differential privacy: DP-SGD through Opacus (see `secure_ft.privacy.engine`).

    Give `target_epsilon` to calibrate the noise so that training.epochs end at that ε, or
    `noise_multiplier` to fix the noise; with both, the noise is fixed and `target_epsilon`
    is a hard budget: training stops before the step that would exceed it.
    """

    mode: Literal["none", "dp"] = Field("dp", description="none, or sample-level differential privacy (Opacus)")
    target_epsilon: float | None = Field(
        8.0, description="ε budget; alone, the noise is calibrated to reach it after training.epochs"
    )
    noise_multiplier: float | None = Field(
        None, description="fixed noise multiplier σ (noise std = σ · max_grad_norm); target_epsilon then caps the run"
    )
    target_delta: float | None = Field(
        None, description="δ; must be below 1/N for N training examples; null = min(1 / (10 N), 1e-5)"
    )
    max_grad_norm: float = Field(1.0, description="per-sample clipping norm C")
    accountant: Literal["prv", "rdp", "gdp"] = Field(
        "prv", description="privacy accountant: prv (tight upper bound), rdp, or gdp (approximation, may understate ε)"
    )
    max_physical_batch_size: int = Field(
        32, ge=1, description="largest batch computed at once; larger logical batches are accumulated"
    )
    grad_sample_mode: Literal["auto", "bookkeeping", "ghost", "hooks", "functorch"] = Field(
        "auto", description="per-sample gradient method; auto = the fastest exact one that supports the model"
    )
    secure_mode: bool = Field(
        False, description="cryptographically secure sampling and noise (needs the torchcsprng package)"
    )
    budget_dir: str | None = Field(
        None, description="the organisation's privacy budget ledger (secure_ft.privacy.budget_ledger): every run "
        "on a data set is recorded there by data fingerprint; null = $SECURE_FT_BUDGET_DIR, else privacy-budget in "
        "the per-user data folder ($XDG_DATA_HOME/secure-ft or ~/.local/share/secure-ft)"
    )

    @field_validator("target_epsilon")
    @classmethod
    def _positive_epsilon(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < math.inf):
            raise ValueError("target_epsilon must be a finite number > 0 (typical values: 1 to 10); "
                             "use noise_multiplier alone for a run without a budget")
        return value

    @field_validator("noise_multiplier")
    @classmethod
    def _positive_noise(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < math.inf):
            raise ValueError("noise_multiplier must be a finite number > 0 (0 means no noise and no privacy)")
        return value

    @field_validator("target_delta")
    @classmethod
    def _delta_in_range(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value < 1):
            raise ValueError("target_delta must lie strictly between 0 and 1, and below 1/N for N training "
                             "examples; null chooses 1/(10 N)")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _positive_clip(cls, value: float) -> float:
        if not (0 < value < math.inf):
            raise ValueError("max_grad_norm (the per-sample clipping norm) must be a finite number > 0, e.g. 1.0")
        return value

    @model_validator(mode="after")
    def _one_noise_source(self) -> "PrivacyConfig":
        if self.mode == "dp" and self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("privacy.mode dp needs target_epsilon or noise_multiplier")
        return self


class FederatedConfig(_Section):
    """Federated fine-tuning with Flower (`federated/`, `secure-ft federate`, `mode: federated`).

    Each site trains locally through the same loop as a central run; the `privacy` section,
    when `mode: dp`, applies to every site (sample-level DP-SGD on the site's own data, with
    its own accountant). The server aggregates the sites' updates (FedAvg or FedProx),
    validates each update first, optionally adds central client-level DP, and evaluates the
    global model on the held-out validation split after every round. `training` settings
    (batch size, learning rate, ...) apply to each site's local training; `training.epochs`
    is replaced by `rounds` × `local_epochs`.
    """

    num_sites: int = Field(3, ge=1, description="sites taking part (simulation: partitions of the data)")
    partition: Literal["iid", "group", "dirichlet"] = Field(
        "group", description="simulation: split rows at random, by a group column, or by Dirichlet(α) label skew"
    )
    partition_column: str | None = Field(
        "state", description="partition: group — the group column that defines the sites' populations"
    )
    site_groups: dict[str, list[str]] | None = Field(
        None, description="partition: group — explicit site name → group values; null = balance groups over sites"
    )
    dirichlet_alpha: float = Field(0.5, gt=0, description="partition: dirichlet — smaller α, stronger label skew")
    min_site_examples: int = Field(8, ge=1, description="a simulated site with fewer training rows is an error")
    rounds: int = Field(3, ge=1, description="federated rounds")
    local_epochs: int = Field(1, ge=1, description="passes over its own data each site makes per round")
    local_steps: int | None = Field(None, ge=1, description="cap on each site's optimizer steps per round")
    strategy: Literal["fedavg", "fedprox", "fedavgm"] = Field(
        "fedavg", description="server aggregation: fedavg, fedprox, or fedavgm (server learning rate and momentum)"
    )
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: weight μ of the proximal term μ/2·‖w − w_global‖²")
    server_learning_rate: float = Field(
        1.0, gt=0, description="fedavgm: step the server takes along the averaged site update (1 = FedAvg)"
    )
    server_momentum: float = Field(0.0, ge=0, lt=1, description="fedavgm: server momentum β (0 = none)")
    fraction_train: float = Field(1.0, gt=0, le=1, description="share of connected sites asked to train each round")
    min_available_sites: int = Field(2, ge=1, description="the server waits until this many sites are connected")
    min_train_sites: int = Field(
        2, ge=1, description="fewest sites asked to train per round, and fewest accepted updates a round needs"
    )
    accept_failures: bool = Field(
        True, description="aggregate a round although some sites failed or were rejected (they are logged)"
    )
    round_timeout_s: float = Field(
        3600.0, gt=0, description="how long the server waits for the sites of a round: first for enough of them to be "
        "connected, then for their updates (and again for their evaluations); a round that ends with fewer than "
        "min_train_sites updates fails the run, naming the sites that did not answer")
    run_timeout_s: float | None = Field(
        None, gt=0, description="the rounds' deadline in seconds, counted from the first round (None: rounds × 4 × "
        "round_timeout_s: each round's three bounded waits and as long again for the server's own work); past it "
        "the run fails, resumable from its last finished round")
    server_evaluation: bool = Field(
        True, description="evaluate the global model on the held-out validation split after every round"
    )
    federated_evaluation: bool = Field(
        True, description="also have each site evaluate the global model on its own validation rows"
    )
    central_dp: Literal["none", "fixed", "adaptive"] = Field(
        "none", description="client-level DP at the server (Flower's DP wrappers): fixed or adaptive clipping"
    )
    central_noise_multiplier: float = Field(
        1.2, gt=0, description="central DP noise multiplier z (1.2 keeps the default 3 rounds within ε 8)")
    central_clipping_norm: float = Field(
        10.0, gt=0, description="central DP clipping norm of each site's update (adaptive: the initial norm)"
    )
    central_target_quantile: float = Field(
        0.5, gt=0, lt=1, description="adaptive central DP: share of updates left unclipped the norm aims for"
    )
    central_delta: float = Field(1e-5, gt=0, lt=1, description="δ of the central client-level guarantee")
    secagg: bool = Field(
        False, description="secure aggregation (SecAgg+, Flower's legacy API): the server sees only the sum"
    )
    secagg_reconstruction_threshold: int = Field(
        2, ge=2, description="SecAgg+: shares needed to reconstruct a dropped site's mask"
    )
    secagg_clipping_range: float = Field(
        1.0, gt=0, description="SecAgg+: each coordinate of an update is clipped to ± this before quantization"
    )
    secagg_max_weight: float = Field(
        10000.0, gt=0, description="SecAgg+: at least the largest site's training rows (bounds the weights)"
    )
    update_norm_bound: float | None = Field(None, gt=0, description="max L2 norm of a site's update; null = no bound")
    on_oversized_update: Literal["clip", "drop"] = Field(
        "drop", description="an update beyond update_norm_bound is scaled down to it (clip) or rejected (drop)"
    )
    simulation_workers: int = Field(
        1, ge=1, description="simulation: sites trained at the same time (each loads its own model copy)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "FederatedConfig":
        if self.min_train_sites > self.num_sites:
            raise ValueError(f"min_train_sites ({self.min_train_sites}) cannot exceed num_sites ({self.num_sites})")
        if self.min_available_sites > self.num_sites:
            raise ValueError(f"min_available_sites ({self.min_available_sites}) cannot exceed num_sites "
                             f"({self.num_sites})")
        if self.partition == "group" and not self.partition_column and not self.site_groups:
            raise ValueError("partition: group needs partition_column (a data.group_columns entry)")
        if self.site_groups is not None and len(self.site_groups) != self.num_sites:
            raise ValueError(f"site_groups names {len(self.site_groups)} sites but num_sites is {self.num_sites}")
        if self.secagg and self.central_dp != "none":
            raise ValueError("secagg cannot be combined with central_dp: server-side clipping needs each site's "
                             "update, which SecAgg+ hides; use privacy.mode: dp (per-site DP) with secagg instead")
        if self.secagg and self.update_norm_bound is not None:
            raise ValueError("secagg hides each site's update, so update_norm_bound cannot be checked; "
                             "leave it null (secagg_clipping_range bounds every coordinate instead)")
        if self.strategy != "fedavgm" and (self.server_learning_rate != 1.0 or self.server_momentum != 0.0):
            raise ValueError("server_learning_rate and server_momentum are used by strategy: fedavgm only; "
                             "set strategy: fedavgm or remove them")
        if self.strategy == "fedavgm" and self.central_dp != "none":
            # Flower's DP wrappers add noise after the inner strategy's step: a server learning rate or
            # momentum would change the sensitivity the noise was calibrated for
            raise ValueError("strategy: fedavgm cannot be combined with central_dp (the server step would scale "
                             "the clipped updates after the noise was calibrated); use fedavg or fedprox")
        if self.strategy == "fedavgm" and self.secagg:
            raise ValueError("secagg averages the masked updates with its own strategy; strategy: fedavgm is not "
                             "available with it — use fedavg or fedprox")
        if self.secagg and self.min_train_sites < 2:
            raise ValueError("secagg needs min_train_sites >= 2: the sum of one site's update is that update")
        return self


class EmbeddingSwapConfig(_Section):
    """The `embedding-swap` recipe: TextFooler-style word swaps from local resources only."""

    embedding: str = Field(
        "trained", description="word vectors: `trained` (the audited model's input embeddings), `default`, or a model folder"
    )
    max_candidates: int = Field(20, ge=1, description="nearest neighbours tried per word")
    min_word_similarity: float = Field(0.40, ge=-1, le=1, description="cosine similarity a swapped word keeps")
    sentence_encoder: str = Field(
        "default", description="sentence-transformers folder for the meaning constraint; `default` = packaged MiniLM"
    )
    min_sentence_similarity: float = Field(
        0.90, ge=-1, le=1, description="cosine similarity of the window around each swap, against the original"
    )
    window_size: int = Field(15, ge=1, description="words in the sentence-similarity window")
    filter_antonyms: bool = Field(True, description="reject WordNet antonyms (direct and indirect)")
    match_part_of_speech: bool = Field(True, description="a swap must share a WordNet part of speech with the word")


class RobustnessAuditConfig(_Section):
    """Adversarial robustness audit (TextAttack, offline); see `audits/robustness.py`."""

    recipes: list[str] = Field(
        default_factory=lambda: ["deepwordbug-lp", "pwws-lp", "embedding-swap-lp"],
        description="attack recipes the policy judges (unless it names its own gated_recipes): by default the "
        "label-preserving variants of the three families; stock TextAttack names also work where their "
        "resources are available",
        min_length=1,
    )
    stress_recipes: list[str] = Field(
        default_factory=lambda: ["deepwordbug", "pwws", "embedding-swap"],
        description="recipes run as a stress test that never gates (default: the stock, unconstrained recipes), "
        "reported beside the judged ones; [] = none",
    )
    stress_min_correct_examples: int = Field(
        40, ge=1, description="correctly classified texts each stress recipe attacks: the first of the judged "
        "recipes' sample, so both attack the same texts")
    num_examples: int | None = Field(
        None, ge=1, description="seeded sample of the test split to attack; null = walk a seeded shuffle of the "
        "test split until min_correct_examples texts the model gets right are in (all of the split when fewer)")
    min_correct_examples: int = Field(
        100, ge=1, description="with num_examples: null, correctly classified texts each recipe attacks (enough "
        "for a Wilson 95% interval about ±0.1 wide)")
    query_budget: int = Field(
        1000, ge=1, description="model queries allowed per attacked example; enough for the default recipes' "
        "whole search on texts the model reads in full (a search stopped by the budget proves nothing: "
        "the policy's max_budget_exhausted_fraction judges how often that happened)")
    workers: int = Field(2, ge=1, description="parallel processes (each with its own copy of the model)")
    batch_size: int = Field(64, ge=1, description="texts per forward pass of the model")
    visible_text_only: bool = Field(
        True, description="attack the part of each text the model reads (its first model.max_length tokens)"
    )
    resume: bool = Field(True, description="continue an interrupted audit of the same model and settings")
    allow_downloads: bool = Field(
        False, description="let stock recipes download their resources (needs a network); off = fail fast"
    )
    resources_dir: str | None = Field(
        None, description="offline NLTK/TextAttack resources; null = $SECURE_FT_RESOURCES or ~/.cache/secure-ft"
    )
    embedding_swap: EmbeddingSwapConfig = Field(default_factory=EmbeddingSwapConfig)


class FairnessAuditConfig(_Section):
    sensitive_columns: list[str] | None = Field(
        None, description="group columns to audit; null = data.group_columns"
    )
    intersections: bool = Field(False, description="also audit the intersection of all sensitive columns")
    min_group_size: int = Field(
        20, ge=1, description="groups with fewer test rows are reported as insufficient data and left out of summaries"
    )
    positive_class: str | None = Field(
        None,
        description="label whose one-vs-rest rates are compared; null = the second label of a binary task, "
        "macro over classes for a multi-class task",
    )
    n_boot: int = Field(200, ge=0, description="bootstrap resamples for confidence intervals; 0 = no intervals")
    ci_level: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    n_permutations: int = Field(
        1000, ge=0, description="group-label shuffles of the permutation test of each disparity; 0 = no test "
        "(then no disparity can fail, only pass or be inconclusive)")


class PrivacyAuditConfig(_Section):
    membership_examples: int = Field(
        200, ge=10, description="members (train rows) and as many non-members (test, then validation rows) to attack"
    )
    n_boot: int = Field(200, ge=0, description="bootstrap resamples for the attack metrics' intervals")
    ci_level: float = Field(0.95, gt=0, lt=1, description="confidence level of intervals and of the empirical ε bound")
    calibrated_attack: bool = Field(
        True, description="also run the attack calibrated by the pretrained base model's loss (loads the base model)"
    )
    canaries: int = Field(0, ge=0, description="secret-sharer canaries in a throw-away run; 0 = off")
    canary_repeats: int = Field(4, ge=1, description="times each canary is inserted into the throw-away training data")
    canary_candidates: int = Field(
        1000, ge=10, description="random candidate secrets each canary is ranked against"
    )
    canary_steps: int = Field(100, ge=1, description="optimizer steps of the throw-away canary run")


class AuditsConfig(_Section):
    robustness: RobustnessAuditConfig = Field(default_factory=RobustnessAuditConfig)
    fairness: FairnessAuditConfig = Field(default_factory=FairnessAuditConfig)
    privacy: PrivacyAuditConfig = Field(default_factory=PrivacyAuditConfig)


class ExportConfig(_Section):
    signing_key: str | None = Field(
        None, description="ECDSA P-256 private key (PEM, `secure-ft keygen`) that signs the verdict and the bundle; "
        "null = $SECURE_FT_SIGNING_KEY, else a per-user key made once in ~/.config/secure-ft/keys"
    )
    include_evidence: bool = Field(False, description="copy adversarial-example evidence into the bundle")
    intended_use: str | None = Field(
        None, description="model card: what the model is for and who uses it; card.intended_purpose wins when set "
        "(the technical documentation); null = a generic statement"
    )
    out_of_scope_use: str | None = Field(None, description="model card: uses the model must not be put to; "
                                            "card.out_of_scope_uses wins when set")
    license: str | None = Field(None, description="model card: license identifier (e.g. apache-2.0, other)")


class CardConfig(_Section):
    """Statements for the technical documentation (EU AI Act Annex IV; SR 11-7 model documentation).

    Written by the people responsible for the model, shown in the report's "Technical
    documentation" section and in the bundle's model card, and saved in the run's config.yaml
    (which the signed verdict binds). Policies may require them (``documentation.required_card_fields``);
    pre-flight then refuses a run without them. Human oversight is not written here: it is
    the signed approvals (`secure-ft approve`). With ``data.source: builtin:*`` every statement
    left null is the shipped one for that demo data set (`secure_ft.records.technical_documentation`).
    """

    intended_purpose: str | None = Field(
        None, min_length=1, description="what the model is for, who uses it and how its outputs are used")
    out_of_scope_uses: list[str] | None = Field(
        None, min_length=1, description="uses the model must not be put to, one per item")
    known_limitations: list[str] | None = Field(
        None, min_length=1, description="what the model is known not to do well, one per item (measured figures "
        "where known)")
    deidentification: str | None = Field(
        None, min_length=1, description="how personal data in the training data was removed or masked, and by whom")
    data_provenance: str | None = Field(
        None, min_length=1, description="where the training data comes from, under which licence or agreement, "
        "and how it was selected")

    @field_validator("intended_purpose", "deidentification", "data_provenance")
    @classmethod
    def _written_statement(cls, value: str | None) -> str | None:
        return _no_placeholder(value)

    @field_validator("out_of_scope_uses", "known_limitations")
    @classmethod
    def _written_items(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else [_no_placeholder(value) for value in values]


def _no_placeholder(value: str | None) -> str | None:
    """A statement must say something: blank text or a `<...>` placeholder (pre-flight's snippet) is refused."""
    if value is None:
        return None
    if not value.strip() or (value.strip().startswith("<") and value.strip().endswith(">")):
        raise ValueError(f"{value!r} is a blank or a placeholder: write the statement (or remove the key)")
    return value


class ReportConfig(_Section):
    include_examples: bool = Field(False, description="show training / test text in the report (may hold PHI)")


with warnings.catch_warnings():
    # `register` is the key users write; pydantic warns that it shadows ABCMeta.register, which no config uses
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class MlflowTrackingConfig(_Section):
        """Where a finished run is shown in MLflow (`secure_ft.pipeline.mlflow_tracking`); the run directory stays the record."""

        uri: str | None = Field(
            None, description="MLflow tracking URI (http://host:5000, sqlite:///mlflow.db, databricks); null = "
            "$MLFLOW_TRACKING_URI; tracking is off when neither is set. Needs `pip install 'secure-ft[mlflow]'`"
        )
        experiment: str = Field("secure-ft", min_length=1, description="MLflow experiment the run is logged under")
        run_name: str | None = Field(None, description="MLflow run name; null = the run directory's name")
        register: str | None = Field(
            None, min_length=1, description="registered model name: a run whose gate passed and whose bundle was "
            "written is registered as a new version of it (as `secure-ft export --register NAME` does)"
        )


class TrackingConfig(_Section):
    mlflow: MlflowTrackingConfig = Field(default_factory=MlflowTrackingConfig)


class RunConfig(_Section):
    """Everything one run needs. All fields have defaults: the built-in demo."""

    mode: Literal["central", "federated"] = Field(
        "central", description="train on one machine (plain or DP), or across sites with Flower"
    )
    seed: int = Field(13)
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto")
    output_dir: str = Field("runs", description="run directories are created under this folder")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    audits: AuditsConfig = Field(default_factory=AuditsConfig)
    policy: str | None = Field(None, description="policy YAML; null = the shipped regulated-use default")
    export: ExportConfig = Field(default_factory=ExportConfig)
    card: CardConfig = Field(default_factory=CardConfig, description="technical documentation statements "
                             "(intended purpose, out-of-scope uses, limitations, de-identification, data provenance)")
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    # the file this config came from, for error messages and relative paths
    _source_path: Path | None = None

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    def resolve_path(self, value: str, *, hub_name_fallback: bool = False) -> str:
        """Resolve a relative path in the config against the config file's folder (never the current one).

        With `hub_name_fallback` (``model.name_or_path``), a value with no such file beside the
        config stays as written, since ``org/name`` is then a model hub name, not a path.
        """
        if self._source_path is None or os.path.isabs(value) or value.startswith("builtin:"):
            return value
        candidate = self._source_path.parent / value
        if hub_name_fallback and not candidate.exists():
            return value
        return str(candidate)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @model_validator(mode="after")
    def _federated_front_end_is_public(self) -> "RunConfig":
        robustness = self.training.robustness
        if self.mode == "federated" and robustness.front_end_extra_words_from_training_data:
            raise ValueError(
                "training.robustness.front_end_extra_words_from_training_data cannot be used with mode: federated: "
                "every site and the coordinator must build the same spelling front end, and adding the training "
                "data's words would need every site's data at the coordinator (outside the DP guarantee); set it "
                "to false (the front end is then built from public resources and the base tokenizer alone)")
        return self


def format_validation_error(error: ValidationError, source: str) -> str:
    """One readable message per bad field: file, dotted field path, problem and allowed values."""
    lines = [f"{source}: invalid run configuration"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {field}: unknown key (check the spelling; `secure-ft config init` lists every key)")
            continue
        problem = item["msg"]
        allowed = item.get("ctx", {}).get("expected")
        hint = f" (allowed: {allowed})" if allowed else ""
        lines.append(f"  - {field}: {problem}{hint}; got {item.get('input')!r}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> RunConfig:
    """Load a run config from YAML; None gives the built-in default."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (create one with `secure-ft config init {path}`)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error}); fix the syntax at the line shown") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    config = config_from_dict(raw, str(path))
    config._source_path = path.resolve()
    # paths in a config file are relative to the file, so a config and its data travel together
    config.data.source = config.resolve_path(config.data.source, hub_name_fallback=True)  # or a `datasets` hub name
    if config.model.name_or_path != "default":
        config.model.name_or_path = config.resolve_path(config.model.name_or_path, hub_name_fallback=True)
    if config.policy is not None:
        config.policy = config.resolve_path(config.policy)
    return config


def starter_config_text() -> str:
    """A commented YAML file listing every key with its default and meaning."""
    lines = ["# secure-ft run configuration. Every key is optional; shown values are the defaults.", ""]
    _describe(RunConfig(), lines, indent=0)
    return "\n".join(lines) + "\n"


def _describe(section: BaseModel, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _describe(value, lines, indent + 1)
        else:
            dumped = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False).strip()
            lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")
