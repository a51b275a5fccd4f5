"""Import TextAttack against the platform's own offline resources, with every download path shut.

TextAttack reads NLTK's stopwords when imported, downloads six NLTK packages on its first
import unless its cache holds a marker file, calls ``nltk.download("omw-1.4")`` when PWWS is
built, pulls word embeddings from S3 and models from the Hugging Face hub. Here:

* ``NLTK_DATA`` and ``nltk.data.path`` point at the folder :mod:`audits.offline_resources`
  built, and ``TA_CACHE_DIR`` at ours (holding the marker), *before* the import;
* TextAttack's import overwrites ``HF_HOME``, ``XDG_CACHE_HOME``, ``TFHUB_CACHE_DIR`` and
  ``PYTORCH_TRANSFORMERS_CACHE`` for the whole process; we put them back;
* ``nltk.download`` answers from the local folder and never fetches (English WordNet needs
  no OMW, which is the one PWWS asks for), except inside ``downloads_blocked(False)``, where
  the user allowed downloads;
* unless the user allows downloads, :func:`downloads_blocked` makes TextAttack's S3/URL
  fetches and every Hugging Face hub request fail at once with an
  :class:`~secure_ft.errors.AuditError` naming what was wanted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from types import ModuleType
from typing import Iterator

from audits.offline_resources import OfflineResources
from secure_ft.errors import AuditError

log = logging.getLogger(__name__)

# environment variables textattack's import overwrites (textattack.shared.utils.install.set_cache_dir)
_OVERWRITTEN_ENV = ("TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME")
# NLTK packages secure-ft provides; anything else TextAttack asks nltk.download for is skipped
_PROVIDED = {"stopwords": "corpora/stopwords", "wordnet": "corpora/wordnet"}
_real_nltk_download = None  # nltk's own downloader, used only where the user allows downloads


def point_nltk_at(resources: OfflineResources) -> None:
    """Make NLTK (imported or not yet) search our data folder first."""
    folder = str(resources.nltk_data)
    existing = os.environ.get("NLTK_DATA", "")
    if folder not in existing.split(os.pathsep):
        os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (folder, existing) if p)
    import nltk
    import nltk.data

    if folder in nltk.data.path:
        nltk.data.path.remove(folder)
    nltk.data.path.insert(0, folder)
    global _real_nltk_download
    if nltk.download is not _offline_nltk_download:
        _real_nltk_download = nltk.download
    nltk.download = _offline_nltk_download


def _offline_nltk_download(info_or_id=None, *args, **kwargs) -> bool:
    """Stand-in for ``nltk.download``: True when the package is already here, never a fetch."""
    import nltk.data

    name = info_or_id if isinstance(info_or_id, str) else getattr(info_or_id, "id", str(info_or_id))
    if name in _PROVIDED:
        try:
            nltk.data.find(_PROVIDED[name])
            return True
        except LookupError:
            return False
    log.debug("offline: skipped nltk.download(%r)", name)
    return False


def import_textattack(resources: OfflineResources) -> ModuleType:
    """Import (once) and return the ``textattack`` package, wired to `resources`."""
    point_nltk_at(resources)
    if "textattack" in sys.modules:
        return sys.modules["textattack"]
    saved = {name: os.environ.get(name) for name in _OVERWRITTEN_ENV}
    os.environ["TA_CACHE_DIR"] = str(resources.textattack_cache)
    # textattack configures its logger with logging.config.dictConfig, which disables every logger that
    # exists already (secure-ft's own among them): remember which were enabled and enable them again
    enabled = [logger for logger in logging.Logger.manager.loggerDict.values()
               if isinstance(logger, logging.Logger) and not logger.disabled]
    try:
        import textattack  # noqa: F401  (reads stopwords; finds the post-install marker)
    except LookupError as error:
        raise AuditError(
            f"TextAttack could not find an NLTK resource in {resources.nltk_data} ({str(error).strip().splitlines()[0]}); "
            "rebuild the resources with `python -m audits.offline_resources --force`"
        ) from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for logger in enabled:
            logger.disabled = False
    logging.getLogger("textattack").setLevel(logging.WARNING)
    # its INFO lines come from this logger, whose own level (INFO) the parent's does not override
    logging.getLogger(TEXTATTACK_LOGGER).addFilter(_once_in_the_main_process)
    return sys.modules["textattack"]


TEXTATTACK_LOGGER = "textattack.shared.utils.install"
_OWN_MODEL_UNKNOWN = re.compile(r"Unknown if model of class <class '(secure_ft|audits|federated)\.")
_seen_messages: set[str] = set()


def _once_in_the_main_process(record: logging.LogRecord) -> bool:
    """TextAttack's INFO lines ("Goal function … compatible with model …", repeated for every attack
    it builds) once per message in the main process, never from attack workers; warnings always,
    except its "Unknown if model of class …" about secure-ft's own classifiers."""
    if record.levelno >= logging.WARNING:
        # TextAttack knows only the model classes in its own table and warns about any other at every
        # attack it builds; secure-ft's classifiers return class scores, what its goal functions need
        return not _OWN_MODEL_UNKNOWN.match(record.getMessage())
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return False
    message = record.getMessage()
    if message in _seen_messages:
        return False
    _seen_messages.add(message)
    return True


def _refuse_download(what: str):
    def refuse(*args, **kwargs):
        target = args[0] if args else kwargs
        raise AuditError(
            f"this recipe needs {what} {target!r}, which secure-ft does not download during an audit; "
            "choose a recipe that runs offline (deepwordbug, pwws, embedding-swap, pruthi, input-reduction) "
            "or, on a machine with a network, set audits.robustness.allow_downloads: true"
        )

    return refuse


@contextlib.contextmanager
def downloads_blocked(enabled: bool = True) -> Iterator[None]:
    """Within the block, TextAttack's S3/URL fetches and Hugging Face hub requests fail fast."""
    if not enabled:
        import nltk

        # the user allows downloads: NLTK may fetch what a stock recipe needs (into our folder, first on its path)
        nltk.download = _real_nltk_download or nltk.download
        try:
            yield
        finally:
            nltk.download = _offline_nltk_download
        return
    import huggingface_hub.constants as hub_constants
    import textattack.shared.utils as ta_utils
    import transformers.utils.hub as transformers_hub

    saved = (ta_utils.download_from_s3, ta_utils.download_from_url,
             hub_constants.HF_HUB_OFFLINE, transformers_hub._is_offline_mode)
    ta_utils.download_from_s3 = _refuse_download("a download from TextAttack's S3 bucket")
    ta_utils.download_from_url = _refuse_download("a download from")
    hub_constants.HF_HUB_OFFLINE = True
    transformers_hub._is_offline_mode = True
    try:
        yield
    finally:
        (ta_utils.download_from_s3, ta_utils.download_from_url,
         hub_constants.HF_HUB_OFFLINE, transformers_hub._is_offline_mode) = saved
