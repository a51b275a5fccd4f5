"""Small synthetic labelled data for tests (importable as `toy_data`)."""

from __future__ import annotations

import random

import pandas as pd

TOPICS = {
    "cards": ["card", "charge", "refund", "fee", "statement"],
    "loans": ["loan", "mortgage", "payment", "interest", "lender"],
    "reports": ["report", "credit", "score", "bureau", "dispute"],
}
FILLER = ["the", "my", "was", "and", "they", "please", "help", "bank", "account", "about"]
VOCAB = sorted({word for words in TOPICS.values() for word in words} | set(FILLER))


def toy_frame(rows_per_class: int = 40, seed: int = 0) -> pd.DataFrame:
    """Short synthetic complaints whose topic words give the label away."""
    rng = random.Random(seed)
    records = []
    for label, words in TOPICS.items():
        for index in range(rows_per_class):
            text = " ".join(rng.choice(words if rng.random() < 0.5 else FILLER) for _ in range(8))
            records.append({"text": text, "product": label, "region": rng.choice(["north", "south"]),
                            "senior": str(index % 4 == 0)})
    return pd.DataFrame(records).sample(frac=1.0, random_state=seed).reset_index(drop=True)
