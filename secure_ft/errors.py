"""Exception types of secure-ft.

Each kind of failure has its own type so that callers (and the CLI's exit codes) can tell a
user's mistake from a policy decision from a bug. Every message names the file, the field or
row, and what to do about it.
"""

from __future__ import annotations


class SecureFTError(Exception):
    """Base class of every error secure-ft raises on purpose."""

    #: process exit code the CLI uses for this error
    exit_code = 2


class ConfigError(SecureFTError):
    """A run config or policy file is missing, unparsable or holds a bad value."""


class DataError(SecureFTError):
    """Input data is missing columns, has bad rows, or cannot be split."""


class ModelError(SecureFTError):
    """A base or trained model folder is missing, unsafe (pickle weights) or unreadable."""


class CheckpointError(SecureFTError):
    """A training checkpoint is corrupt, incomplete or from another run."""


class PrivacyError(SecureFTError):
    """A differential-privacy setting is invalid or the accounting does not hold."""


class AuditError(SecureFTError):
    """An audit could not run (missing resource, bad input); the audit then fails."""


class PolicyError(SecureFTError):
    """A policy file is invalid."""


class ExportRefused(SecureFTError):
    """Export was refused because the model has no passing verdict for its current hash."""

    exit_code = 3


class BundleError(SecureFTError):
    """An export bundle or run ledger failed verification (tampered, missing file, bad signature)."""

    exit_code = 4


class RunDirectoryError(SecureFTError):
    """A record in a run directory is unreadable (damaged or edited by hand)."""


class ResourceError(SecureFTError):
    """A local language resource (WordNet, stopwords, a spelling dictionary) is missing or damaged."""
