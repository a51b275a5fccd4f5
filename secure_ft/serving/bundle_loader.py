"""The one gate between a bundle on disk and a listening server.

:func:`load_verified_bundle` reads every file of the bundle once into memory
(`secure_ft.records.bundle_snapshot`), verifies those bytes exactly as ``secure-ft verify`` does
(`secure_ft.release.export.verify_snapshot`: the OpenSSF signature over every file by a trusted key,
no file left unsigned, then the gate's signed verdict over the model and its evidence) and
hands back the verified snapshot. The verifier's release policy (`secure_ft.release.release_check`), when
one is configured, is applied too: a bundle it refuses is never served (exit 4). The server builds the model, tokenizer, front end and
model card from that snapshot only; nothing under the bundle folder is opened again, so a
file swapped or rewritten after the read is never served. A self-signed bundle is never
served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from secure_ft.records.bundle_snapshot import BundleSnapshot


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed verification: its verified bytes and what verification established.

    Attributes
    ----------
    bundle_dir
        The bundle folder (for names and messages; never read again).
    model_sha256
        The model hash the signed verdict names.
    policy_name
        Name of the policy whose verdict let the model out.
    public_key_sha256
        Fingerprint of the key the signature was checked with.
    trusted_key
        Always True here: the signer was given or configured as trusted.
    snapshot
        Every file's bytes, as verified.
    """

    bundle_dir: Path
    model_sha256: str
    policy_name: str
    public_key_sha256: str
    trusted_key: bool
    snapshot: BundleSnapshot = field(repr=False)
    policy_sha256: str = ""
    release: dict = field(default_factory=dict)  # `ReleaseDecision.summary()`: the release policy applied, or none
    release_lines: tuple[str, ...] = ()

    def read(self, relative: str) -> bytes:
        """A verified file's bytes (``"audit_report.json"``, ``"model/config.json"``)."""
        return self.snapshot.read(relative)


def load_verified_bundle(bundle: str | os.PathLike[str],
                         public_key: str | os.PathLike[str] | None = None,
                         release_policy: str | os.PathLike[str] | None = None,
                         org_root_pub: str | os.PathLike[str] | None = None) -> VerifiedBundle:
    """Read `bundle` once, verify the bytes as ``secure-ft verify`` does, and keep them; refuse otherwise.

    Parameters
    ----------
    bundle
        Export bundle folder.
    public_key
        The signer's public key (PEM path, or a folder of them). Default: the user's trust
        list (`secure_ft.release.keys`).
    release_policy, org_root_pub
        The release policy to apply and its root public key (default: the environment, then the
        config folder; `secure_ft.release.release_policy`).

    Returns
    -------
    VerifiedBundle

    Raises
    ------
    secure_ft.errors.BundleError
        Naming the first file that failed, or the release policy's rule that refused it (exit code 4).
    """
    from secure_ft.errors import BundleError, ExportRefused
    from secure_ft.records.bundle_snapshot import read_bundle_snapshot
    from secure_ft.release.export import verify_snapshot

    snapshot = read_bundle_snapshot(Path(bundle))
    try:
        result = verify_snapshot(snapshot, public_key=public_key, release_policy=release_policy,
                                 org_root_pub=org_root_pub)
    except ExportRefused as error:  # a bundle that may not be released is never served either
        raise BundleError(f"{bundle}: refusing to serve: {error}") from None
    return VerifiedBundle(
        bundle_dir=Path(result.bundle_dir), model_sha256=result.model_sha256, policy_name=result.policy_name,
        public_key_sha256=result.public_key_sha256, trusted_key=result.trusted_key, snapshot=snapshot,
        policy_sha256=result.policy_sha256, release=result.release.summary() if result.release else {},
        release_lines=tuple(result.release.lines()) if result.release else (),
    )
