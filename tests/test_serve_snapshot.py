"""The server serves exactly the bytes it verified: swaps during start-up and writes while running fail.

An attacker with write access to the bundle folder (the README's threat model) swaps a file —
the weights, the model config, the spelling dictionary, the report, the verdict — around each
stage of start-up, and restores it afterwards. Every try must end with the server refusing to
start (the swap happened before the bundle was read) or answering exactly as the verified
model, with the verified model card. While a server runs, overwriting the weights in place
(what changed a memory-mapped model live) and editing the documents change nothing.
Nothing under the bundle folder is opened once verification has read it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import secure_ft.records.bundle_snapshot
import secure_ft.release.export
import secure_ft.serving.app
import secure_ft.serving.classifier
import secure_ft.text.snapshot_model
from fake_run import TEXTS, WORDS
from secure_ft.errors import BundleError, ModelError
from secure_ft.serving import BundleClassifier, ServeSettings, create_app, load_verified_bundle
from secure_ft.text.spelling import SpellingFrontEnd
from serve_helpers import serve_processes, signed_bundle

PROBE = ["lon chrge on my cerdit card", "morgage paymnet late", *TEXTS[:4]]  # typos: the dictionary matters

# each start-up stage, as (module, function) the start-up path looks up at call time
STAGES = [(secure_ft.records.bundle_snapshot, "read_bundle_snapshot"), (secure_ft.release.export, "verify_snapshot"),
          (secure_ft.text.snapshot_model, "load_model_from_snapshot"), (secure_ft.serving.classifier, "trained_max_length"),
          (secure_ft.serving.app, "read_model_card")]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    return signed_bundle(tmp_path_factory.mktemp("snapshot"), front_end=SpellingFrontEnd({w: 10 for w in WORDS}))


def attacker_weights(weights: bytes) -> bytes:
    """The same file with the classifier's bias bytes rewritten in place to push every text to class 1."""
    header_length = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + header_length])
    name = next(key for key in header if key.endswith("classifier.bias"))
    start, end = (8 + header_length + offset for offset in header[name]["data_offsets"])
    bias = np.array([-50.0, 50.0, -50.0], dtype="<f4").tobytes()
    assert end - start == len(bias)
    return weights[:start] + bias + weights[end:]


def attacker_versions(bundle: Path) -> dict[str, bytes]:
    report = json.loads((bundle / "audit_report.json").read_text())
    report["privacy_guarantee"]["epsilon"] = 0.5
    report["run"]["model"]["max_length"] = 4
    verdict = json.loads((bundle / "verdict.json").read_text())
    verdict["warnings"] = ["none, all clear"]
    config = json.loads((bundle / "model" / "config.json").read_text())
    config["id2label"] = {"0": "Student loan", "1": "Student loan", "2": "Student loan"}
    dictionary = next(p for p in (bundle / "model" / "front_end").iterdir() if p.name != "config.json")
    return {
        "model/model.safetensors": attacker_weights((bundle / "model" / "model.safetensors").read_bytes()),
        "model/config.json": json.dumps(config).encode(),
        f"model/front_end/{dictionary.name}": b"xyz\t1\n",
        "audit_report.json": json.dumps(report).encode(),
        "verdict.json": json.dumps(verdict).encode(),
    }


@contextmanager
def swapped_around(monkeypatch, module, name: str, path: Path, attack: bytes):
    """`module.name` wrapped: `path` holds `attack` while the stage runs, and its own bytes again after."""
    original_function, original_bytes = getattr(module, name), path.read_bytes()

    def stage(*args, **kwargs):
        path.write_bytes(attack)
        try:
            return original_function(*args, **kwargs)
        finally:
            path.write_bytes(original_bytes)

    monkeypatch.setattr(module, name, stage)
    try:
        yield
    finally:
        monkeypatch.setattr(module, name, original_function)
        path.write_bytes(original_bytes)


def start_up(bundle: Path, public_key: Path):
    """What `secure-ft serve` does before it listens."""
    verified = load_verified_bundle(bundle, public_key)
    classifier = BundleClassifier.from_bundle(verified, "cpu")
    return create_app(classifier, verified, ServeSettings(model_name="m"))


def answers(app) -> tuple[np.ndarray, dict]:
    with TestClient(app) as client:
        reply = client.post("/predict", json={"texts": PROBE}).json()
        return np.array(reply["probabilities"]), {**client.get("/model-card").json(), "labels": reply["labels"]}


def test_a_file_swapped_around_any_start_up_stage_is_never_served(signed, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    shutil.copytree(signed.bundle, bundle)
    verified_probabilities, verified_card = answers(start_up(bundle, signed.public_key))
    attacks = attacker_versions(bundle)
    for relative, attack in attacks.items():  # each attack really changes what a naive server would serve
        assert attack != (bundle / relative).read_bytes()
    outcomes = {}
    for module, name in STAGES:
        for relative, attack in attacks.items():
            with swapped_around(monkeypatch, module, name, bundle / relative, attack):
                try:
                    probabilities, card = answers(start_up(bundle, signed.public_key))
                except (BundleError, ModelError) as error:
                    outcomes[name, relative] = "refused"
                    assert relative.rsplit("/", 1)[-1] in str(error) or "signature" in str(error), str(error)
                    continue
            np.testing.assert_allclose(probabilities, verified_probabilities, atol=1e-6, rtol=0,
                                       err_msg=f"{relative} swapped around {name}")
            assert card == verified_card, f"{relative} swapped around {name}"
            outcomes[name, relative] = "verified model"
    # swapped while the bundle was read: refused; swapped at any later stage: the verified model, unchanged
    assert {key for key, outcome in outcomes.items() if outcome == "refused"} == {
        ("read_bundle_snapshot", relative) for relative in attacks}
    assert len(outcomes) == len(STAGES) * len(attacks)


def test_nothing_under_the_bundle_is_opened_after_verification(signed, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(signed.bundle, bundle)
    root, opened, watching = str(bundle.resolve()), [], []

    def audit(event, args):
        if watching and event in ("open", "os.listdir", "os.scandir", "os.walk", "glob.glob", "os.stat"):
            target = args[0] if args else None
            if isinstance(target, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(target)).startswith(root):
                opened.append((event, os.fsdecode(target)))

    sys.addaudithook(audit)  # audit hooks cannot be removed; it records only while `watching`
    verified = load_verified_bundle(bundle, signed.public_key)
    watching.append(True)
    try:
        app = create_app(BundleClassifier.from_bundle(verified, "cpu"), verified, ServeSettings(model_name="m"))
        answers(app)
    finally:
        watching.clear()
    assert opened == []


def test_writing_into_a_running_servers_bundle_changes_nothing(signed, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(signed.bundle, bundle)
    weights = bundle / "model" / "model.safetensors"
    attack = attacker_weights(weights.read_bytes())
    assert len(attack) == weights.stat().st_size  # same layout: an in-place write, as into a memory map
    with serve_processes(tmp_path) as start:
        server = start(bundle, "--public-key", str(signed.public_key), "--model-name", "m")
        server.wait_ready()

        def ask():
            reply = httpx.post(f"{server.url}/predict", json={"texts": PROBE}, timeout=30).json()
            card = httpx.get(f"{server.url}/model-card", timeout=30).json()
            return np.array(reply["probabilities"]), reply["labels"], card

        before = ask()
        with open(weights, "r+b") as stream:  # the same inode: a memory-mapped model would change live
            stream.seek(len(attack) - 4)
            stream.write(attack[-4:])
            stream.seek(0)
            stream.write(attack)
        report = json.loads((bundle / "audit_report.json").read_text())
        report["privacy_guarantee"]["epsilon"] = 0.5
        (bundle / "audit_report.json").write_text(json.dumps(report))
        (bundle / "README.md").write_text("all audits passed\n")
        after = ask()
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1] == before[1] and after[2] == before[2]
    assert after[2]["privacy"]["epsilon"] != 0.5
    # and the attack would have worked on a server that read the file now
    attacked = BundleClassifier.from_bundle(_unchecked_bundle(bundle), "cpu")
    assert set(attacked.label_names(attacked.probabilities(PROBE))) == {attacked.labels[1]}


def _unchecked_bundle(bundle: Path):
    """The folder as it is now, without verification (what a server that re-read files would serve)."""
    from secure_ft.records.bundle_snapshot import read_bundle_snapshot
    from secure_ft.serving.bundle_loader import VerifiedBundle
    from secure_ft.text.snapshot_model import snapshot_model_digest

    snapshot = read_bundle_snapshot(bundle)
    return VerifiedBundle(bundle_dir=bundle, model_sha256=snapshot_model_digest(snapshot), policy_name="-",
                          public_key_sha256="-", trusted_key=False, snapshot=snapshot)
