"""The one gate between a bundle on disk and a listening server.

Everything the server reads from a bundle, it reads only after :func:`load_verified_bundle`
returned. It verifies exactly as ``secure-ft verify`` does (`secure_ft.export.verify_bundle`):
the OpenSSF signature over every file by a trusted key, then the gate's signed verdict over
the model and its evidence. A self-signed bundle is never served.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed verification, and what verification established about it.

    Attributes
    ----------
    bundle_dir
        The bundle folder.
    model_dir
        Its ``model/`` folder (safetensors, tokenizer, config).
    model_sha256
        The model hash the signed manifest names; the server checks the loaded folder against it.
    policy_name
        Name of the policy whose verdict let the model out.
    public_key_sha256
        Fingerprint of the key the signature was checked with.
    trusted_key
        Always True here: the signer was given or configured as trusted.
    """

    bundle_dir: Path
    model_dir: Path
    model_sha256: str
    policy_name: str
    public_key_sha256: str
    trusted_key: bool


def load_verified_bundle(bundle: str | os.PathLike[str],
                         public_key: str | os.PathLike[str] | None = None) -> VerifiedBundle:
    """Verify `bundle` as ``secure-ft verify`` does and describe it; refuse otherwise.

    Parameters
    ----------
    bundle
        Export bundle folder.
    public_key
        The signer's public key (PEM path, or a folder of them). Default: the user's trust
        list (`secure_ft.keys`).

    Returns
    -------
    VerifiedBundle

    Raises
    ------
    secure_ft.errors.BundleError
        Naming the first file that failed (exit code 4).
    """
    from secure_ft.export import verify_bundle

    result = verify_bundle(Path(bundle), public_key=public_key)
    return VerifiedBundle(
        bundle_dir=Path(result.bundle_dir), model_dir=Path(result.bundle_dir) / "model",
        model_sha256=result.model_sha256, policy_name=result.policy_name,
        public_key_sha256=result.public_key_sha256, trusted_key=result.trusted_key,
    )
