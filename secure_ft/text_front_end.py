"""The text front end: what turns a raw text into the text a model reads.

Every path that feeds text to an exported model (serving today; the audits when a model ships
a front end) calls :func:`load_text_front_end` on the model folder and applies the result
before tokenising, so a model is served with exactly the preprocessing it was audited with.
Today no model folder carries a front end and it is the identity; a typo-correcting front end
(e.g. symspell, kept in the model folder so the bundle signs it) plugs in here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

TextFrontEnd = Callable[[Sequence[str]], list[str]]


def identity_front_end(texts: Sequence[str]) -> list[str]:
    """The texts unchanged (as a new list)."""
    return list(texts)


def load_text_front_end(model_dir: str | Path) -> TextFrontEnd:
    """The front end `model_dir` declares; the identity while none is declared.

    Parameters
    ----------
    model_dir
        A ``save_pretrained`` model folder (a bundle's ``model/``).

    Returns
    -------
    callable
        Maps a sequence of raw texts to the list of texts to tokenise, one for one.
    """
    del model_dir  # no front end is stored in model folders yet
    return identity_front_end
