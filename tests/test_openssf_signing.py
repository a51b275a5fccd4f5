"""OpenSSF model-signing: our signatures verify with the library's own command, offline."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_ft.errors import BundleError, ConfigError
from secure_ft.release import keys
from secure_ft.release.openssf_signing import sign_folder, verify_folder

FILES = {
    "config.json": b'{"architectures": ["BertForSequenceClassification"]}',
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x01" * 1024,
    "vocab.txt": b"[PAD]\n[UNK]\nrefund\n",
    "tokenizer.json": b"{}",
    "front_end/frequency_dictionary.txt": b"refund 1000\n",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv(keys.CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "bundle" / "model"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def key_pair(tmp_path):
    return keys.generate_key_pair(tmp_path / "keys" / "gate")


def model_signing_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The library's own command, in a process that sees no secure-ft code and no network."""
    script = Path(sys.executable).with_name("model_signing")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "model_signing"]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)}
    dead_end = "http://127.0.0.1:9"  # the discard port: any attempt to reach the network fails at once
    env.update(HOME=str(cwd), XDG_CACHE_HOME=str(cwd / "cache"), XDG_DATA_HOME=str(cwd / "data"),
               HTTP_PROXY=dead_end, HTTPS_PROXY=dead_end, http_proxy=dead_end, https_proxy=dead_end,
               NO_PROXY="", no_proxy="", OTEL_SDK_DISABLED="true")
    return subprocess.run(command + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_library_cli_verifies_a_folder_we_signed_beside_it(model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    signature = sign_folder(model_dir, private_path, model_dir.with_name("model.sig"))
    assert verify_folder(model_dir, public_path, signature) == sorted(FILES)
    result = model_signing_cli("verify", "key", str(model_dir), "--signature", str(signature),
                               "--public_key", str(public_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout

    (model_dir / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\nrefunds\n")
    result = model_signing_cli("verify", "key", str(model_dir), "--signature", str(signature),
                               "--public_key", str(public_path), cwd=tmp_path)
    assert result.returncode != 0 and "vocab.txt" in result.stdout + result.stderr


def test_library_cli_verifies_a_signature_inside_the_folder(model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    signature = sign_folder(model_dir, private_path, model_dir / "model.sig")
    sign_folder(model_dir, private_path, model_dir / "model.sig")  # re-signing: the old signature is not hashed
    assert "model.sig" not in verify_folder(model_dir, public_path, signature)
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    result = model_signing_cli("verify", "key", str(model_dir), "--signature", str(signature),
                               "--public_key", str(public_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_we_verify_a_folder_the_library_cli_signed(model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    for flags, ignore_git_paths in [((), True), (("--no-ignore-git-paths",), False)]:
        signature = tmp_path / "cli.sig"
        result = model_signing_cli("sign", "key", str(model_dir), "--private_key", str(private_path),
                                   "--signature", str(signature), *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert verify_folder(model_dir, public_path, signature, ignore_git_paths=ignore_git_paths) == sorted(FILES)
        # a signature that left out other paths than the verifier expects is refused
        with pytest.raises(BundleError, match="unsigned"):
            verify_folder(model_dir, public_path, signature, ignore_git_paths=not ignore_git_paths)


def test_git_files_are_left_out_by_default_like_the_library_cli(model_dir, key_pair, tmp_path):
    from secure_ft.records.model_identity import model_digest

    private_path, public_path = key_pair
    (model_dir / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    signature = sign_folder(model_dir, private_path, tmp_path / "model.sig")
    assert ".gitattributes" not in verify_folder(model_dir, public_path, signature)
    args = ["verify", "key", str(model_dir), "--signature", str(signature), "--public_key", str(public_path)]
    assert model_signing_cli(*args, cwd=tmp_path).returncode == 0
    assert model_signing_cli(*args, "--no-ignore-git-paths", cwd=tmp_path).returncode == 0
    # the OpenSSF layer then does not see a change to it; the model digest (the attestation) does
    before = model_digest(model_dir)
    (model_dir / ".gitattributes").write_text("changed\n")
    verify_folder(model_dir, public_path, signature)
    assert model_digest(model_dir) != before


def test_git_files_signed_on_request_and_the_cli_then_needs_no_ignore_git_paths(model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    (model_dir / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    signature = sign_folder(model_dir, private_path, tmp_path / "model.sig", ignore_git_paths=False)
    assert ".gitattributes" in verify_folder(model_dir, public_path, signature, ignore_git_paths=False)
    args = ["verify", "key", str(model_dir), "--signature", str(signature), "--public_key", str(public_path)]
    default = model_signing_cli(*args, cwd=tmp_path)
    assert default.returncode != 0 and ".gitattributes" in default.stderr  # fails closed, never open
    assert model_signing_cli(*args, "--no-ignore-git-paths", cwd=tmp_path).returncode == 0
    (model_dir / ".gitattributes").write_text("changed\n")
    with pytest.raises(BundleError, match=r"changed: \.gitattributes"):
        verify_folder(model_dir, public_path, signature, ignore_git_paths=False)


@pytest.mark.parametrize("change, named", [
    (lambda m: (m / "vocab.txt").write_bytes(b"[PAD]\n"), "changed: vocab.txt"),
    (lambda m: (m / "front_end" / "frequency_dictionary.txt").write_bytes(b"x"),
     "changed: front_end/frequency_dictionary.txt"),
    (lambda m: (m / "tokenizer.json").unlink(), "missing: tokenizer.json"),
    (lambda m: (m / "extra.py").write_text("import os"), "extra: extra.py"),
])
def test_any_change_to_the_folder_is_refused_naming_the_file(model_dir, key_pair, tmp_path, change, named):
    private_path, public_path = key_pair
    signature = sign_folder(model_dir, private_path, tmp_path / "model.sig")
    change(model_dir)
    with pytest.raises(BundleError, match=f"does not match its OpenSSF signature.*{named}"):
        verify_folder(model_dir, public_path, signature)


def test_wrong_key_tampered_or_missing_signature_is_refused(model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    signature = sign_folder(model_dir, private_path, tmp_path / "model.sig")
    _, other_public = keys.generate_key_pair(tmp_path / "other")
    with pytest.raises(BundleError, match="not made by this public key"):
        verify_folder(model_dir, other_public, signature)
    bundle = json.loads(signature.read_text())
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    signature.write_text(json.dumps(bundle))
    with pytest.raises(BundleError, match="not made by this public key, or was altered"):
        verify_folder(model_dir, public_path, signature)
    bundle = json.loads(signature.read_text())
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig[:-1] + bytes([sig[-1] ^ 1]))).decode()
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["serialization"]["ignore_paths"] = ["model.safetensors"]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    signature.write_text(json.dumps(bundle))  # the valid signature, over a payload that now ignores the weights
    with pytest.raises(BundleError, match="not made by this public key, or was altered"):
        verify_folder(model_dir, public_path, signature)
    signature.write_text("{}")
    with pytest.raises(BundleError, match="not a model-signing signature"):
        verify_folder(model_dir, public_path, signature)
    with pytest.raises(BundleError, match=r"nope\.sig: OpenSSF signature cannot be read"):
        verify_folder(model_dir, public_path, tmp_path / "nope.sig")


def test_signer_chosen_ignore_paths_cannot_exempt_a_file(model_dir, key_pair, tmp_path):
    """model-signing's verifier ignores what the signature says to ignore; we do not accept that."""
    private_path, public_path = key_pair
    signature = sign_folder(model_dir, private_path, tmp_path / "model.sig", ignore_paths=["model.safetensors"])
    (model_dir / "model.safetensors").write_bytes(b"swapped weights")
    cli = model_signing_cli("verify", "key", str(model_dir), "--signature", str(signature),
                            "--public_key", str(public_path), cwd=tmp_path)
    assert cli.returncode == 0  # the library alone passes the swapped weights
    with pytest.raises(BundleError, match=r"leaves \[.*'model.safetensors'\] unsigned"):
        verify_folder(model_dir, public_path, signature)
    # the caller who asked for that ignore list gets it
    verify_folder(model_dir, public_path, signature, ignore_paths=["model.safetensors"])


def test_ignore_paths_must_stay_inside_the_folder(model_dir, key_pair, tmp_path):
    private_path, _ = key_pair
    for bad in ["../outside", "/etc/passwd", "."]:
        with pytest.raises(BundleError, match="must be relative to the model folder"):
            sign_folder(model_dir, private_path, tmp_path / "model.sig", ignore_paths=[bad])


def test_symlink_in_the_folder_is_refused(model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    signature = sign_folder(model_dir, private_path, tmp_path / "model.sig")
    (model_dir / "link.txt").symlink_to(model_dir / "vocab.txt")
    with pytest.raises(BundleError, match="link.txt"):
        sign_folder(model_dir, private_path, tmp_path / "again.sig")
    with pytest.raises(BundleError, match="link.txt.*not links"):
        verify_folder(model_dir, public_path, signature)


def test_ed25519_key_is_refused_with_the_fix(model_dir, tmp_path):
    old = tmp_path / "old.key"
    old.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    old.chmod(0o600)
    with pytest.raises(ConfigError, match="P-256.*secure-ft keygen"):
        sign_folder(model_dir, old, tmp_path / "model.sig")
    assert not (tmp_path / "model.sig").exists()


def test_encrypted_key_signs_with_the_passphrase(model_dir, tmp_path, monkeypatch):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "enc.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret")))
    path.chmod(0o600)
    public = tmp_path / "enc.pub"
    public.write_bytes(keys.public_key_pem(key.public_key()))
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "s3cret")
    signature = sign_folder(model_dir, path, tmp_path / "model.sig")
    assert verify_folder(model_dir, public, signature) == sorted(FILES)


def test_real_saved_model_folder_round_trip(tiny_model_dir, key_pair, tmp_path):
    private_path, public_path = key_pair
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    signature = sign_folder(copy, private_path, tmp_path / "model.sig")
    assert "model.safetensors" in verify_folder(copy, public_path, signature)
