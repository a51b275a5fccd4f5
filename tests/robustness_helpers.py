"""Helpers for the robustness audit tests: a brittle tiny classifier, splits, a network blocker."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

from secure_ft.records.data import DatasetSplits

KEYWORD = "refund"
OTHER_WORDS = ["card", "charge", "fee", "statement", "loan", "mortgage", "payment", "interest", "lender",
               "report", "credit", "score", "bureau", "dispute", "bank", "account", "help", "please"]
VOCAB = sorted({KEYWORD, *OTHER_WORDS, "the", "my", "was", "and", "they", "about"})
LABEL_NAMES = ["other", "refund request"]


def keyword_frame(rows: int, seed: int, start_row: int = 1, positive_share: float = 0.5) -> pd.DataFrame:
    """Texts of 8 words; label 1 exactly when the keyword is among them."""
    rng = random.Random(seed)
    records = []
    for i in range(rows):
        words = [rng.choice(OTHER_WORDS) for _ in range(8)]
        label = int(i < round(rows * positive_share))
        if label:
            words[rng.randrange(8)] = KEYWORD
        records.append({"row": start_row + i, "text": " ".join(words), "label": label,
                        "label_name": LABEL_NAMES[label]})
    return pd.DataFrame(records)


def keyword_splits(test_rows: int = 24) -> DatasetSplits:
    return DatasetSplits(
        train=keyword_frame(40, seed=1, start_row=1), validation=keyword_frame(20, seed=2, start_row=100),
        # mostly keyword texts: the ones a keyword-keyed model can be talked out of
        test=keyword_frame(test_rows, seed=3, start_row=200, positive_share=0.8), label_names=list(LABEL_NAMES), group_columns=[],
        derived_group_columns=[], fingerprint="test-fingerprint", source="synthetic keyword data",
    )


def train_brittle_model(folder: Path) -> Path:
    """A tiny BERT that learned to answer by one word (`refund`): the textbook brittle classifier."""
    from secure_ft.text.models import load_trained_model, save_trained_model
    from tiny_models import tiny_bert_folder

    torch.manual_seed(0)
    base = tiny_bert_folder(folder / "base", VOCAB, num_labels=2, seed=0)
    model, tokenizer = load_trained_model(base)
    frame = keyword_frame(256, seed=4).sample(frac=1.0, random_state=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        for start in range(0, len(frame), 32):
            batch = frame.iloc[start:start + 32]
            encoded = tokenizer(list(batch["text"]), truncation=True, max_length=16, padding=True, return_tensors="pt")
            loss = model(**encoded, labels=torch.tensor(batch["label"].values)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    target = folder / "model"
    save_trained_model(model, tokenizer, target)
    return target


@contextlib.contextmanager
def network_blocked():
    """Every socket connect in this process raises; the attempted addresses are collected."""
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access blocked in tests (tried {address!r})")

    with mock.patch.object(socket.socket, "connect", refuse), mock.patch.object(socket.socket, "connect_ex", refuse):
        yield attempts


def session_resources(tmp_path_factory):
    """The offline resources, built once per test session (every robustness test module shares them)."""
    from audits.offline_resources import ensure_offline_resources

    return ensure_offline_resources(tmp_path_factory.getbasetemp() / "secure-ft-resources")
