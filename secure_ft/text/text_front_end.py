"""The text front end: what turns a raw text into the text a model reads.

Serving calls :func:`load_text_front_end` on the bundle's model folder and applies the result
before tokenising. It returns the typo-correcting front end saved in the folder
(`secure_ft.text.models.load_front_end`, the same one training and the audits apply through
`secure_ft.text.text_classifier`), so a model is served with exactly the preprocessing it was
audited with; the identity when the folder has none.
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
    from secure_ft.text.models import load_front_end

    front_end = load_front_end(model_dir)
    return identity_front_end if front_end is None else front_end.correct_all
