"""Model identity: the digest covers every file of the folder, and nothing else decides it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from secure_ft.errors import BundleError
from secure_ft.records.model_identity import HASH_FILE, manifest_digest, model_digest, model_manifest

FILES = {
    "config.json": b'{"pooling": "cls"}',
    "model.safetensors": b"\x00" * 4096 + b"weights",
    "vocab.txt": b"[PAD]\n[UNK]\nrefund\n",
    "tokenizer.json": b'{"model": {"type": "WordPiece"}}',
    "front_end/frequency_dictionary.txt": b"refund 1000\n",
    "front_end/nested/bigrams.txt": b"refund please 10\n",
}


def write_folder(path, files=FILES):
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def model_dir(tmp_path):
    return write_folder(tmp_path / "model")


@pytest.mark.parametrize("name", sorted(FILES))
def test_one_byte_changed_in_any_file_changes_the_digest(model_dir, name):
    before = model_digest(model_dir)
    data = bytearray((model_dir / name).read_bytes())
    data[-1] ^= 1
    (model_dir / name).write_bytes(bytes(data))
    assert model_digest(model_dir) != before


def test_adding_removing_or_renaming_a_file_changes_the_digest(model_dir):
    original = model_digest(model_dir)
    (model_dir / "front_end" / "extra.txt").write_bytes(b"")
    added = model_digest(model_dir)
    (model_dir / "front_end" / "extra.txt").unlink()
    assert model_digest(model_dir) == original
    (model_dir / "vocab.txt").rename(model_dir / "vocab2.txt")
    assert len({original, added, model_digest(model_dir)}) == 3


def test_an_empty_subfolder_does_not_count_but_moving_a_file_into_one_does(model_dir):
    original = model_digest(model_dir)
    (model_dir / "empty").mkdir()
    assert model_digest(model_dir) == original
    (model_dir / "vocab.txt").rename(model_dir / "empty" / "vocab.txt")
    assert model_digest(model_dir) != original


def test_digest_is_independent_of_creation_order_and_location(tmp_path):
    forward = write_folder(tmp_path / "a")
    backward = write_folder(tmp_path / "b", dict(reversed(list(FILES.items()))))
    assert model_digest(forward) == model_digest(backward)


def test_the_hash_record_is_left_out_only_at_the_top(model_dir):
    original = model_digest(model_dir)
    (model_dir / HASH_FILE).write_text(json.dumps({"sha256": original}))
    assert model_digest(model_dir) == original
    (model_dir / "front_end" / HASH_FILE).write_text("{}")
    assert model_digest(model_dir) != original


def test_manifest_lists_every_file_sorted_with_size_and_sha256(model_dir):
    manifest = model_manifest(model_dir)
    assert [entry["path"] for entry in manifest] == sorted(FILES)
    for entry in manifest:
        assert entry["size"] == len(FILES[entry["path"]])
        assert entry["sha256"] == hashlib.sha256(FILES[entry["path"]]).hexdigest()
    # documented recipe: anyone can recompute the digest from the manifest without secure-ft
    text = json.dumps({"format": "secure-ft/model-manifest/v1", "files": manifest},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert model_digest(model_dir) == manifest_digest(manifest) == hashlib.sha256(text.encode()).hexdigest()


def test_large_file_is_hashed_in_blocks(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    folder = write_folder(tmp_path / "m", {"model.safetensors": data})
    [entry] = model_manifest(folder)
    assert entry == {"path": "model.safetensors", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_real_saved_model_folder(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert model_digest(copy) == model_digest(tiny_model_dir)
    names = {entry["path"] for entry in model_manifest(copy)}
    assert {"config.json", "model.safetensors", "vocab.txt"} <= names


def test_symlinked_file_is_refused_naming_it(model_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the model")
    (model_dir / "front_end" / "link.txt").symlink_to(outside)
    with pytest.raises(BundleError, match=r"front_end/link\.txt is a symbolic link"):
        model_digest(model_dir)


def test_symlinked_folder_is_refused_naming_it(model_dir, tmp_path):
    write_folder(tmp_path / "elsewhere", {"x.txt": b"x"})
    (model_dir / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleError, match="linked is a symbolic link"):
        model_manifest(model_dir)


def test_fifo_is_refused(model_dir):
    os.mkfifo(model_dir / "pipe")
    with pytest.raises(BundleError, match="pipe is not a regular file"):
        model_digest(model_dir)


def test_missing_file_or_empty_folder_is_refused(tmp_path):
    with pytest.raises(BundleError, match="cannot be read"):
        model_digest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no files"):
        model_digest(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a folder"):
        model_digest(tmp_path / "file")
