"""The organisation's release policy: which verdicts may let a model out, signed by its root key.

The gate's verdict says whether a model met *an* audit policy; the release policy says which
verdicts the organisation accepts. It is a YAML document::

    version: 1
    name: acme-release
    trusted_gate_keys:                     # verdicts must be signed by one of these
      - {fingerprint: 3f9a…, name: ci-gate}
    accepted_audit_policies:               # by content (SHA-256), never by name alone
      - {name: regulated-default, sha256: 8c1e…}
    approvals:
      required: 1                          # k of the n approvers below
      when: needs_review                   # or: always
      approvers:
        - {name: alice, public_key: "-----BEGIN PUBLIC KEY-----…"}
    max_verdict_age_days: 90               # omit: verdicts never expire
    revoked_keys:
      - {fingerprint: 77aa…, revoked_at: "2026-11-02T00:00:00Z", reason: compromised}

signed by the organisation's root key (ECDSA P-256, `secure_ft.release.keys`) as an in-toto Statement
in a DSSE envelope (`secure_ft.release.attestation`): its one subject is the YAML's SHA-256 and its
predicate holds the YAML text itself, so the document that is enforced is exactly the one
that was signed. An envelope whose signature does not verify with the configured root public
key, or a bare YAML file, is refused (exit 4).

Where it lives: ``--release-policy FILE``, else ``$SECURE_FT_RELEASE_POLICY``, else
``release/release-policy.dsse.json`` in the secure-ft config folder. The root public key it must
be signed with: ``--org-root-pub FILE``, else ``$SECURE_FT_ORG_ROOT_PUB``, else
``release/org-root.pub`` in the config folder — never a key carried by the policy or a bundle.
With no release policy configured, export, verify and serve behave as before and say that no
release policy was applied.

Revocation: a key revoked as ``compromised`` is refused for everything it signed, whatever time
the signature claims (whoever holds a stolen key can write any timestamp); a key ``retired``
(rotated out, not leaked) is refused for signatures dated at or after ``revoked_at``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from secure_ft.errors import BundleError, ConfigError
from secure_ft.release.attestation import read_envelope, sign_statement, verify_envelope
from secure_ft.release.keys import config_dir, load_public_key, public_key_fingerprint, public_key_from_pem

RELEASE_POLICY_PREDICATE_TYPE = "https://secure-ft.dev/release-policy/v1"
RELEASE_POLICY_ENV = "SECURE_FT_RELEASE_POLICY"
ORG_ROOT_ENV = "SECURE_FT_ORG_ROOT_PUB"
RELEASE_DIR = "release"
SIGNED_POLICY_NAME = "release-policy.dsse.json"
ORG_ROOT_NAME = "org-root.pub"
#: the subject that names the signed YAML document
POLICY_SUBJECT = "release-policy.yaml"

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def _fingerprint(value: str) -> str:
    value = value.strip().lower()
    if not _FINGERPRINT.fullmatch(value):
        raise ValueError("must be a key fingerprint: 64 hex digits, the SHA-256 of the DER public key "
                         "(`secure-ft keygen` prints it)")
    return value


class GateKeyEntry(BaseModel):
    """A gate key whose signed verdicts the organisation accepts."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    name: str = ""

    @field_validator("fingerprint")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _fingerprint(value)


class AcceptedPolicy(BaseModel):
    """An audit policy, by the SHA-256 of its file; the name is for people."""

    model_config = ConfigDict(extra="forbid")
    name: str
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _fingerprint(value)


class Approver(BaseModel):
    """A person who may sign approvals, with their public key (PEM)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _p256(cls, value: str) -> str:
        try:
            public_key_from_pem(value.encode("ascii"), "approver public_key")
        except (ConfigError, UnicodeEncodeError) as error:
            raise ValueError(str(error)) from None
        return value

    @property
    def key(self):
        return public_key_from_pem(self.public_key.encode("ascii"), f"approver {self.name}")

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.key)


class ApprovalRule(BaseModel):
    """k of n approvers must approve: always, or only verdicts that need review."""

    model_config = ConfigDict(extra="forbid")
    required: int = Field(ge=1, description="k: how many distinct listed approvers must approve")
    when: Literal["always", "needs_review"] = "needs_review"
    approvers: list[Approver] = Field(min_length=1)

    @model_validator(mode="after")
    def _k_of_n(self) -> "ApprovalRule":
        fingerprints = [approver.fingerprint for approver in self.approvers]
        if len(set(fingerprints)) != len(fingerprints):
            raise ValueError("the same public key is listed for two approvers")
        if self.required > len(self.approvers):
            raise ValueError(f"required is {self.required} but only {len(self.approvers)} approvers are listed")
        return self


class RevokedKey(BaseModel):
    """A key that no longer signs: gate, approver or any other key named by fingerprint."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    revoked_at: datetime
    reason: Literal["compromised", "retired"] = "compromised"

    @field_validator("fingerprint")
    @classmethod
    def _hex(cls, value: str) -> str:
        return _fingerprint(value)

    @field_validator("revoked_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2026-11-02T00:00:00Z")
        return value

    def refuses(self, signed_at: datetime) -> bool:
        """Whether a signature claiming `signed_at` by this key is refused."""
        return self.reason == "compromised" or signed_at >= self.revoked_at


class ReleasePolicy(BaseModel):
    """The organisation's rules for letting a model out (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    name: str
    trusted_gate_keys: list[GateKeyEntry] = Field(min_length=1)
    accepted_audit_policies: list[AcceptedPolicy] = Field(min_length=1)
    approvals: ApprovalRule
    max_verdict_age_days: float | None = Field(default=None, gt=0)
    revoked_keys: list[RevokedKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _four_eyes(self) -> "ReleasePolicy":
        gates = {entry.fingerprint for entry in self.trusted_gate_keys}
        both = [approver.name for approver in self.approvals.approvers if approver.fingerprint in gates]
        if both:
            raise ValueError(f"approver(s) {', '.join(both)} hold a trusted gate key; an approver key may not be a "
                             "gate key (four eyes): give each approver a key of their own (`secure-ft keygen`)")
        return self

    def revocation(self, fingerprint: str) -> RevokedKey | None:
        return next((entry for entry in self.revoked_keys if entry.fingerprint == fingerprint), None)

    def approver(self, fingerprint: str) -> Approver | None:
        return next((entry for entry in self.approvals.approvers if entry.fingerprint == fingerprint), None)

    def gate_key_fingerprints(self) -> set[str]:
        return {entry.fingerprint for entry in self.trusted_gate_keys}


def parse_release_policy(text: str, source: str) -> ReleasePolicy:
    """Validate a release policy's YAML text; ConfigError naming `source`, the field and the problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a release policy is a YAML mapping (see `secure-ft release-policy init`)")
    try:
        return ReleasePolicy.model_validate(raw)
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(str(p) for p in item['loc']) or 'policy'}: {item['msg']}"
                            for item in error.errors())
        raise ConfigError(f"{source}: invalid release policy: {details}") from None


# --- signing and reading -----------------------------------------------------------------------

def sign_release_policy(yaml_path: str | os.PathLike[str], root_private_key) -> dict:
    """A DSSE envelope over the YAML at `yaml_path` (validated first), signed with the root key."""
    yaml_path = Path(yaml_path)
    try:
        data = yaml_path.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{yaml_path}: release policy not found; write one with `secure-ft release-policy init`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{yaml_path}: cannot be read as UTF-8 text ({error})") from None
    policy = parse_release_policy(text, str(yaml_path))
    root = public_key_fingerprint(root_private_key.public_key())
    if root in policy.gate_key_fingerprints() or policy.approver(root) is not None:
        raise ConfigError(f"{yaml_path}: the organisation root key is also listed as a gate or approver key; "
                          "the root signs policies only: give it a key of its own")
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": POLICY_SUBJECT, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}],
                 "predicateType": RELEASE_POLICY_PREDICATE_TYPE,
                 "predicate": {"yaml": text, "name": policy.name}}
    return sign_statement(statement, root_private_key)


@dataclass(frozen=True)
class SignedReleasePolicy:
    """A release policy whose root signature was checked."""

    policy: ReleasePolicy
    sha256: str  # of the signed payload: how bundles, ledgers and messages name this policy
    path: Path
    root_sha256: str
    envelope: dict
    yaml_text: str

    def describe(self) -> str:
        return f"release policy {self.policy.name!r} (sha256 {self.sha256[:16]}…, root key {self.root_sha256[:16]}…)"


def read_signed_release_policy(path: str | os.PathLike[str], root_public_key) -> SignedReleasePolicy:
    """Check `path`'s root signature and return the policy inside.

    Raises
    ------
    BundleError
        The file is a bare (unsigned) YAML document, is not signed by `root_public_key`, or was
        changed after signing (exit 4).
    ConfigError
        The signed document is not a valid release policy (exit 2).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: release policy not found; sign one with `secure-ft release-policy sign`")
    raw = path.read_bytes()
    if not raw.lstrip().startswith(b"{"):
        raise BundleError(f"{path}: is not a signed release policy (a DSSE envelope); an unsigned release policy is "
                          "never applied: sign it with `secure-ft release-policy sign POLICY.yaml --key ORG_ROOT.key`")
    envelope = read_envelope(path)
    root = public_key_fingerprint(root_public_key)
    signers = [entry.get("keyid") for entry in envelope.get("signatures") or [] if isinstance(entry, dict)]
    if signers and any(signer != root for signer in signers):
        other = next(signer for signer in signers if signer != root)
        raise BundleError(f"{path}: the release policy is signed by key {str(other)[:16]}…, not by the organisation "
                          f"root key {root[:16]}… configured here (--org-root-pub, ${ORG_ROOT_ENV} or "
                          f"{default_release_paths()[1]}); a release policy signed by any other key is refused")
    statement = verify_envelope(envelope, [root_public_key], predicate_type=RELEASE_POLICY_PREDICATE_TYPE,
                                source=f"{path} (release policy)")
    text = (statement.get("predicate") or {}).get("yaml")
    subject = statement["subject"][0]
    if (not isinstance(text, str) or len(statement["subject"]) != 1 or subject["name"] != POLICY_SUBJECT
            or hashlib.sha256(text.encode("utf-8")).hexdigest() != subject["digest"]["sha256"]):
        raise BundleError(f"{path}: the signed release policy's text does not match its signed digest; sign it again")
    policy = parse_release_policy(text, f"{path} (signed release policy)")
    return SignedReleasePolicy(policy, envelope_digest(envelope), path, root, envelope, text)


def envelope_digest(envelope: dict) -> str:
    """SHA-256 of an envelope's signed payload (as `secure_ft.release.verdict_attestation.payload_digest`)."""
    return hashlib.sha256(envelope["payload"].encode("ascii")).hexdigest()


# --- where it lives ----------------------------------------------------------------------------

def default_release_paths() -> tuple[Path, Path]:
    """``(release/release-policy.dsse.json, release/org-root.pub)`` in the config folder."""
    folder = config_dir() / RELEASE_DIR
    return folder / SIGNED_POLICY_NAME, folder / ORG_ROOT_NAME


def resolve_release_policy(policy_path: str | os.PathLike[str] | None = None,
                           root_public_key_path: str | os.PathLike[str] | None = None) -> SignedReleasePolicy | None:
    """The release policy to enforce, checked against the organisation root key; None when none is configured.

    Order: the given path, ``$SECURE_FT_RELEASE_POLICY``, the config folder's
    ``release/release-policy.dsse.json``; for the root key: the given path,
    ``$SECURE_FT_ORG_ROOT_PUB``, the config folder's ``release/org-root.pub``.
    """
    default_policy, default_root = default_release_paths()
    if policy_path:
        path, given = Path(policy_path).expanduser(), "--release-policy"
    elif os.environ.get(RELEASE_POLICY_ENV):
        path, given = Path(os.environ[RELEASE_POLICY_ENV]).expanduser(), f"${RELEASE_POLICY_ENV}"
    elif default_policy.exists():
        path, given = default_policy, "the config folder"
    else:
        return None
    if root_public_key_path:
        root = Path(root_public_key_path).expanduser()
    elif os.environ.get(ORG_ROOT_ENV):
        root = Path(os.environ[ORG_ROOT_ENV]).expanduser()
    elif default_root.exists():
        root = default_root
    else:
        raise ConfigError(f"{path}: a release policy is configured ({given}) but no organisation root public key to "
                          f"check it with; pass --org-root-pub ORG_ROOT.pub, set ${ORG_ROOT_ENV}, or put it at "
                          f"{default_root}")
    return read_signed_release_policy(path, load_public_key(root))
