"""Offline resources of the robustness audit: an NLTK data folder and a TextAttack cache we own.

TextAttack reads NLTK's English stopwords when it is imported and NLTK's WordNet when a
synonym attack (PWWS, the embedding swap's antonym filter) runs; left to itself it downloads
both, and more, on first import. secure-ft never lets it: this module assembles the corpora
from sources already installed on the machine into a folder the platform controls, and
:mod:`audits._textattack_offline` points NLTK and TextAttack at it before importing
TextAttack.

Layout under the resource root (``$SECURE_FT_RESOURCES``, default ``~/.cache/secure-ft``)::

    nltk_data/corpora/stopwords/english    one stopword per line
    nltk_data/corpora/wordnet/             Princeton WordNet 3.0 database files
    textattack/post_install_check_3        marker: TextAttack's first-import downloads are done
    manifest.json                          where each corpus came from

The NLTK corpora (where they come from, how they are checked) belong to the core module
:mod:`secure_ft.text.lexicon`, which training-time augmentation shares; this module adds the
TextAttack cache and the command line.

Run ``python -m audits.offline_resources`` once on a new machine (the audit also builds what
is missing on first use); ``--check`` only reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from secure_ft.errors import AuditError, ResourceError
from secure_ft.records.atomic_files import atomic_write_text
from secure_ft.text import lexicon
# re-exported: the audit's public names from before the corpora moved to secure_ft.text.lexicon
from secure_ft.text.lexicon import (  # noqa: F401
    DEBIAN_WORDNET_DIR,
    INSTALL_HINT,
    LEXNAMES,
    ROOT_ENV,
    WORDNET_DIR_ENV,
    WORDNET_FILES,
    _wordnet_sources,
    resource_root,
)

TEXTATTACK_MARKER = "post_install_check_3"  # the file textattack 0.3.x checks before its downloads


@dataclass(frozen=True)
class OfflineResources:
    """Where the audit's offline corpora live and where they came from."""

    root: Path
    stopwords_source: str
    wordnet_source: str

    @property
    def nltk_data(self) -> Path:
        return self.root / "nltk_data"

    @property
    def textattack_cache(self) -> Path:
        return self.root / "textattack"

    @property
    def stopwords_file(self) -> Path:
        return self.nltk_data / "corpora" / "stopwords" / "english"

    @property
    def wordnet_dir(self) -> Path:
        return self.nltk_data / "corpora" / "wordnet"

    @property
    def cache_dir(self) -> Path:
        """Other derived artefacts (embedding neighbour tables)."""
        return self.root / "cache"



def ensure_offline_resources(root: str | os.PathLike[str] | None = None,
                             wordnet_dir: str | os.PathLike[str] | None = None) -> OfflineResources:
    """Return the resources, building whatever is missing from local sources (never the network).

    Raises
    ------
    AuditError
        A corpus is missing and no local source for it was found; the message says what to install.
    """
    root_path = resource_root(root)
    if wordnet_dir is None and not check_offline_resources(root_path):
        corpora = lexicon.ensure_nltk_data(root_path)  # complete: reads the manifest, builds nothing
        return OfflineResources(root_path, corpora.stopwords_source, corpora.wordnet_source)
    return build_offline_resources(root_path, wordnet_dir=wordnet_dir)


def build_offline_resources(root: str | os.PathLike[str] | None = None,
                            wordnet_dir: str | os.PathLike[str] | None = None,
                            force: bool = False) -> OfflineResources:
    """(Re)build the NLTK data folder and the TextAttack cache marker under `root`."""
    root_path = resource_root(root)
    try:
        corpora = lexicon.build_nltk_data(root_path, wordnet_dir=wordnet_dir, force=force)
        cache = root_path / "textattack"
        cache.mkdir(parents=True, exist_ok=True)
        (cache / TEXTATTACK_MARKER).touch()
        (root_path / "cache").mkdir(exist_ok=True)
    except ResourceError as error:
        raise AuditError(str(error)) from None
    except OSError as error:
        raise AuditError(
            f"{root_path}: cannot write the robustness audit's offline resources ({error}); "
            f"make the folder writable or point ${ROOT_ENV} at a writable folder"
        ) from None
    return OfflineResources(root_path, corpora.stopwords_source, corpora.wordnet_source)


def check_offline_resources(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Problems with the resources under `root` (empty when all is in place); builds nothing."""
    root_path = resource_root(root)
    problems = lexicon.missing_nltk_data(root_path)
    if not (root_path / "textattack" / TEXTATTACK_MARKER).is_file():
        problems.append("TextAttack cache marker missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audits.offline_resources",
        description="Build the robustness audit's offline NLTK/TextAttack resources from local sources.",
    )
    parser.add_argument("--root", help=f"resource folder (default ${ROOT_ENV} or ~/.cache/secure-ft)")
    parser.add_argument("--wordnet-dir", help="folder holding the WordNet 3.0 dict files to use")
    parser.add_argument("--force", action="store_true", help="rebuild even if everything is in place")
    parser.add_argument("--check", action="store_true", help="only report what is missing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_offline_resources(args.root)
        for problem in problems:
            print(f"missing: {problem}")
        print("ok" if not problems else f"run `python -m audits.offline_resources` ({INSTALL_HINT})")
        return 0 if not problems else 1
    try:
        resources = build_offline_resources(args.root, wordnet_dir=args.wordnet_dir, force=args.force)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps({**asdict(resources), "root": str(resources.root)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
