"""The frozen encoder on ONNX Runtime: same embeddings as torch, bound into the model digest, served from verified bytes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import secure_ft.text.onnx_encoder as onnx_encoder
from fake_run import TEXTS
from secure_ft.errors import BundleError, ModelError
from secure_ft.records.config import ModelConfig, RunConfig
from secure_ft.records.model_identity import model_digest
from secure_ft.release.export import MODEL_CARD_FILE, verify_bundle
from secure_ft.serving import BundleClassifier, load_verified_bundle
from secure_ft.text.models import load_base_model, load_trained_model
from secure_ft.text.onnx_encoder import GRAPH_FILE, GRAPH_FOLDER, SETTINGS_FILE, GraphSequenceClassifier, OnnxEncoder
from secure_ft.text.text_classifier import TextClassifier
from secure_ft.training.effective_config import effective_config
from secure_ft.training.probe import encoder_graph_folder, torch_encoder
from secure_ft.training.transfer_choice import resolve_run_config
from serve_helpers import signed_bundle

SENTENCES = ["card fee", "the loan payment was late again and again", "a", "mortgage"]


def probe_model(tiny_model_dir, quantize: str = "none"):
    config = ModelConfig(name_or_path=str(tiny_model_dir), transfer="probe", max_length=16, quantize=quantize,
                         encoder_backend="onnx")
    model, tokenizer = load_base_model(config, ["a", "b", "c"])
    return model.eval(), tokenizer, config


def test_exported_encoder_gives_the_torch_embeddings(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SECURE_FT_CACHE", str(tmp_path / "cache"))
    model, tokenizer, config = probe_model(tiny_model_dir)
    graph = encoder_graph_folder(model, tokenizer, config)
    settings = json.loads((graph / SETTINGS_FILE).read_text())
    assert settings["quantize"] == "none" and settings["base_encoder_sha256"] == model_digest(tiny_model_dir)

    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = torch_encoder(model)(**batch)
    got = OnnxEncoder.from_folder(graph, device="cpu")(**batch)
    assert got.shape == expected.shape == (len(SENTENCES), model.config.hidden_size)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)  # the mean-normalised pooling

    # exported once: the next call finds the cache entry and exports nothing
    monkeypatch.setattr(onnx_encoder, "_export", lambda *args: pytest.fail("exported again"))
    assert encoder_graph_folder(model, tokenizer, config) == graph


def test_a_damaged_cache_entry_is_exported_again(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SECURE_FT_CACHE", str(tmp_path / "cache"))
    model, tokenizer, config = probe_model(tiny_model_dir)
    graph = encoder_graph_folder(model, tokenizer, config)
    (graph / SETTINGS_FILE).write_text("{not json")
    assert encoder_graph_folder(model, tokenizer, config) == graph
    assert json.loads((graph / SETTINGS_FILE).read_text())["format"] == onnx_encoder.GRAPH_FORMAT


def test_int8_graph_is_quantized_and_recorded(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SECURE_FT_CACHE", str(tmp_path / "cache"))
    model, tokenizer, config = probe_model(tiny_model_dir, quantize="int8")
    graph = encoder_graph_folder(model, tokenizer, config)
    fp32 = encoder_graph_folder(model, tokenizer, config.model_copy(update={"quantize": "none"}))
    settings = json.loads((graph / SETTINGS_FILE).read_text())
    assert settings["quantize"] == "int8" and settings["quantization"]["weight_type"] == "QInt8"
    assert graph != fp32
    ops = {node.op_type for node in __import__("onnx").load(str(graph / GRAPH_FILE)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}  # int8 products
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    vectors = OnnxEncoder.from_folder(graph, device="cpu")(**batch)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-4)


def test_backend_is_resolved_into_the_effective_config():
    probe, _ = resolve_run_config(RunConfig.model_validate({"model": {"transfer": "probe"}}), 500)
    assert probe.model.encoder_backend == "onnx"
    shown = effective_config(RunConfig.model_validate({"model": {"transfer": "probe"}}), 500, ["a", "b"])
    assert shown.values["model.encoder_backend"] == "onnx"
    assert shown.sources["model.encoder_backend"].startswith("auto: transfer probe")
    lora, _ = resolve_run_config(RunConfig.model_validate({"model": {"transfer": "lora"}}), 500)
    assert lora.model.encoder_backend == "torch"
    with pytest.raises(ValidationError, match="encoder_backend: onnx"):
        RunConfig.model_validate({"model": {"transfer": "full", "encoder_backend": "onnx"}})
    with pytest.raises(ValidationError, match="quantize"):
        RunConfig.model_validate({"model": {"encoder_backend": "torch", "quantize": "int8"}})
    # auto resolving to LoRA (many rows, DP) cannot run a frozen-encoder graph: said before training
    many = RunConfig.model_validate({"model": {"encoder_backend": "onnx"}})
    with pytest.raises(ModelError, match="transfer: auto chose lora"):
        resolve_run_config(many, 50_000)


@pytest.fixture(scope="module")
def graph_bundle(tmp_path_factory):
    return signed_bundle(tmp_path_factory.mktemp("onnx-bundle"), onnx_encoder=True)


def test_the_graph_is_part_of_the_model_digest_and_the_card(graph_bundle):
    model_dir = graph_bundle.run_dir / "model"
    assert (model_dir / GRAPH_FOLDER / GRAPH_FILE).is_file()
    digest = json.loads((model_dir / "model_hash.json").read_text())["sha256"]
    assert digest == model_digest(model_dir)
    copy = model_dir.parent / "model-copy"
    shutil.copytree(model_dir, copy)
    shutil.rmtree(copy / GRAPH_FOLDER)
    assert model_digest(copy) != digest  # the digest covers the graph
    card = (graph_bundle.bundle / MODEL_CARD_FILE).read_text()
    assert "| encoder backend | onnx (fp32)" in card


def test_audits_load_the_folder_on_its_graph(graph_bundle):
    classifier = TextClassifier.load(graph_bundle.run_dir / "model", max_length=16)
    assert isinstance(classifier.model, GraphSequenceClassifier)
    # the embedding-swap attack's word vectors: the frozen encoder's own
    torch_model = load_trained_model(graph_bundle.run_dir / "model")[0]
    assert torch.equal(classifier.model.get_input_embeddings().weight, torch_model.get_input_embeddings().weight)
    probabilities = classifier.predict_proba(TEXTS[:5])
    assert probabilities.shape[0] == 5 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("part", [GRAPH_FILE, SETTINGS_FILE])
def test_a_tampered_graph_fails_verification(graph_bundle, tmp_path, part):
    bundle = tmp_path / "bundle"
    shutil.copytree(graph_bundle.bundle, bundle)
    verify_bundle(bundle, graph_bundle.public_key)  # the untouched copy verifies
    target = bundle / "model" / GRAPH_FOLDER / part
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        verify_bundle(bundle, graph_bundle.public_key)
    with pytest.raises(BundleError):
        load_verified_bundle(bundle, graph_bundle.public_key)


def test_serve_runs_the_graph_from_the_verified_bytes(graph_bundle, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    shutil.copytree(graph_bundle.bundle, bundle)
    sources = []
    real_session = onnx_encoder.OnnxEncoder.__init__

    def recording(self, graph, settings, **options):
        sources.append(graph)
        real_session(self, graph, settings, **options)

    monkeypatch.setattr(onnx_encoder.OnnxEncoder, "__init__", recording)
    verified = load_verified_bundle(bundle, graph_bundle.public_key)
    graph_file = bundle / "model" / GRAPH_FOLDER / GRAPH_FILE
    graph_file.write_bytes(b"not a graph")  # written after verification: never read again
    classifier = BundleClassifier.from_bundle(verified, "cpu")
    assert isinstance(classifier.model, GraphSequenceClassifier)
    assert len(sources) == 1 and isinstance(sources[0], bytes)
    assert sources[0] == (graph_bundle.run_dir / "model" / GRAPH_FOLDER / GRAPH_FILE).read_bytes()
    # the served model is the audited one: same probabilities as the run's folder on its graph
    audited = TextClassifier.load(graph_bundle.run_dir / "model", max_length=classifier.max_length)
    assert np.allclose(classifier.probabilities(TEXTS[:6]), audited.predict_proba(TEXTS[:6]), atol=1e-6)


def test_the_bundle_readme_code_runs_the_graph(graph_bundle, tmp_path, monkeypatch):
    from test_bundle_readme import readme_code, run_readme, served

    namespace = run_readme(graph_bundle.bundle, monkeypatch, readme_code(graph_bundle.bundle))
    assert isinstance(namespace["model"], GraphSequenceClassifier)
    assert "encoder_onnx" in (graph_bundle.bundle / "README.md").read_text()
    _, expected = served(graph_bundle.bundle, [namespace["texts"][0]])
    np.testing.assert_allclose(namespace["probabilities"].numpy(), expected, atol=1e-6, rtol=0)
