"""The ``training.robustness`` config section: augmentation with multiplicity and a typo-correcting front end.

Mounted in `secure_ft.records.config.TrainingConfig` as ``robustness``. It lives in its own module
(one concept: issue #16's settings) and imports nothing from `secure_ft.records.config`, so the
config can import it without an import circle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RobustTrainingConfig(BaseModel):
    """Robustness-focused training (issue #16); the spelling front end is on by default, augmentation off.

    ``augmentation_copies`` K > 0 trains every example together with K perturbed copies
    (`secure_ft.text.augmentation`); under DP the example's and its copies' gradients are averaged
    before per-sample clipping (augmentation multiplicity), so ε does not change, while each
    step computes (K + 1)× as many rows. ``front_end: spelling`` corrects typos
    (`secure_ft.text.spelling`) in training, audits, export and serving alike.
    """

    # as secure_ft.records.config._Section (not imported from there: the config imports this module)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    augmentation_copies: int = Field(
        0, ge=0, le=32, description="perturbed copies K trained with every example (0 = no augmentation); "
        "each step then computes (K + 1)× the rows, at the same ε")
    char_edit_fraction: float = Field(
        0.5, ge=0, le=1, description="share of changed words that get a DeepWordBug-style character edit")
    synonym_fraction: float = Field(
        0.5, ge=0, le=1, description="share of changed words swapped for a WordNet synonym (never an antonym)")
    word_rate: float = Field(
        0.1, gt=0, le=1, description="fraction of a text's words changed in one copy (at least one word)")
    # spelling by default: without it DeepWordBug flipped the default model's every complaint; with
    # it 8 of 12 searches failed (measured on the demo, 128 tokens, whole search)
    front_end: Literal["none", "spelling"] = Field(
        "spelling", description="text front end applied before tokenising in training, audits and serving: "
        "none, or spelling (SymSpell typo correction saved in the model folder)")
    front_end_max_edit_distance: int = Field(
        2, ge=1, le=3, description="largest edit distance the spelling front end corrects")
    front_end_extra_words_from_training_data: bool = Field(
        False, description="add the training data's words to the spelling dictionary; they are NOT covered "
        "by the DP guarantee (the saved dictionary shows which words occur in the data)")

    @model_validator(mode="after")
    def _mix_adds_up(self) -> "RobustTrainingConfig":
        if self.augmentation_copies and abs(self.char_edit_fraction + self.synonym_fraction - 1.0) > 1e-9:
            raise ValueError(
                f"char_edit_fraction ({self.char_edit_fraction:g}) and synonym_fraction ({self.synonym_fraction:g}) "
                "must add up to 1")
        if self.front_end_extra_words_from_training_data and self.front_end != "spelling":
            raise ValueError("front_end_extra_words_from_training_data needs front_end: spelling")
        return self
