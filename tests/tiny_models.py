"""Tiny random BERT classifiers built from a config in the tests themselves: no downloads."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_bert_folder(target: Path, vocab_words: list[str] | None = None, num_labels: int = 2, seed: int = 0) -> Path:
    """Build a tiny random BERT classifier + WordPiece tokenizer in `target` (tests, no downloads)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    words = vocab_words or []
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1) if chr(c) not in vocab]
    vocab += [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    vocab += [str(d) for d in range(10)] + list(".,!?'-")
    (target / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(target / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
