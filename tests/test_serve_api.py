"""The serving app in-process (FastAPI TestClient): protocol shapes, limits, errors, token, logs, metrics.

The bundle is verified and loaded exactly as `secure-ft serve` does; `test_serve_process.py`
covers the real server process.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fake_run import CANARY, LABELS, TEXTS
from secure_ft.errors import ConfigError
from secure_ft.serving import BundleClassifier, ServeSettings, create_app, load_verified_bundle
from secure_ft.serving.auth import read_token
from serve_helpers import signed_bundle

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    signed = signed_bundle(tmp_path_factory.mktemp("serve-api"))
    bundle = load_verified_bundle(signed.bundle, signed.public_key)
    return bundle, BundleClassifier.from_bundle(bundle, "cpu")


def _client(loaded, headers=None, **overrides) -> TestClient:
    bundle, classifier = loaded
    settings = ServeSettings(**{"model_name": "m", "max_texts": 4, "max_chars": 50, "max_body_bytes": 2000,
                                **overrides})
    return TestClient(create_app(classifier, bundle, settings), headers=headers)


def _infer(texts, **tensor):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts, **tensor}]}


def test_protocol_metadata_health_and_model_card(loaded):
    bundle, _ = loaded
    with _client(loaded) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/m/ready").json() == {"name": "m", "ready": True}
        assert client.get("/v2").json()["name"] == "secure-ft"
        meta = client.get("/v2/models/m").json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
        assert client.get("/v2/models/other").status_code == 404
        assert client.post("/v2/models/other/infer", json=_infer(["loan"])).status_code == 404
        card = client.get("/model-card").json()
    assert card["policy_name"] == "regulated-default" and card["verdict"]["passed"] is True
    assert card["verdict"]["outcome"] == "passed"
    assert card["privacy"] == {"epsilon": 3.2, "delta": 1e-5, "accountant": "prv"}
    assert card["labels"] == LABELS and card["model_sha256"] == bundle.model_sha256
    assert card["signature"]["trusted_key"] is True and card["card"].startswith("---\n")


def test_infer_follows_the_v2_schema(loaded):
    with _client(loaded) as client:
        reply = client.post("/v2/models/m/infer", json={"id": "abc", **_infer(TEXTS[:3])}).json()
        assert reply["model_name"] == "m" and reply["id"] == "abc"
        label, probabilities = reply["outputs"]
        assert label["name"] == "label" and label["datatype"] == "BYTES" and label["shape"] == [3]
        assert set(label["data"]) <= set(LABELS)
        assert probabilities["shape"] == [3, 3] and len(probabilities["data"]) == 9
        assert abs(sum(probabilities["data"][:3]) - 1) < 1e-5
        # nested data of shape [n, 1] and a requested subset of outputs
        nested = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["loan"], ["fee"]]}],
                  "outputs": [{"name": "label"}]}
        reply = client.post("/v2/models/m/infer", json=nested).json()
        # the label comes back in the shape it was sent: [2, 1], not [2]
        assert [out["name"] for out in reply["outputs"]] == ["label"] and reply["outputs"][0]["shape"] == [2, 1]
        assert reply["model_version"] == loaded[0].model_sha256[:12]


def _binary_request(texts, shape=None, **parameters):
    raw = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)
    header = {"inputs": [{"name": "text", "shape": shape or [len(texts)], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(raw)}}], **parameters}
    document = json.dumps(header).encode()
    return document + raw, {"Inference-Header-Content-Length": str(len(document))}


def _binary_outputs(reply):
    length = int(reply.headers["inference-header-content-length"])
    document, raw = json.loads(reply.content[:length]), reply.content[length:]
    values, offset = {}, 0
    for output in document["outputs"]:
        size = output["parameters"]["binary_data_size"]
        chunk, offset = raw[offset:offset + size], offset + size
        if output["datatype"] == "FP32":
            values[output["name"]] = np.frombuffer(chunk, dtype="<f4").reshape(output["shape"])
        else:
            items, at = [], 0
            while at < len(chunk):
                n = int.from_bytes(chunk[at:at + 4], "little")
                items.append(chunk[at + 4:at + 4 + n].decode())
                at += 4 + n
            values[output["name"]] = items
    return document, values


def test_binary_tensor_extension_in_and_out_equals_json(loaded):
    texts = ["loan payment late", "fee charged twice", "ünïcode mortgage"]
    with _client(loaded, max_chars=100) as client:
        as_json = client.post("/v2/models/m/infer", json=_infer(texts)).json()
        body, headers = _binary_request(texts, parameters={"binary_data_output": True})
        reply = client.post("/v2/models/m/infer", content=body, headers=headers)  # no Content-Type: allowed here
        assert reply.status_code == 200, reply.text
        document, values = _binary_outputs(reply)
        assert values["label"] == as_json["outputs"][0]["data"]
        assert np.allclose(values["probabilities"].ravel(), as_json["outputs"][1]["data"], atol=1e-6)
        # binary in, JSON out (no binary output asked for), shape [n, 1] as sent
        body, headers = _binary_request(texts, shape=[3, 1])
        reply = client.post("/v2/models/m/infer", content=body, headers=headers)
        assert "inference-header-content-length" not in reply.headers
        assert reply.json()["outputs"][0] == {**as_json["outputs"][0], "shape": [3, 1]}
        # a binary part that does not hold what the header declares
        body, headers = _binary_request(texts)
        assert client.post("/v2/models/m/infer", content=body[:-1], headers=headers).status_code == 422
        assert client.post("/v2/models/m/infer", content=body, headers={
            "Inference-Header-Content-Length": "99999"}).status_code == 422


def test_version_routes_answer_only_the_served_version(loaded):
    version = loaded[0].model_sha256[:12]
    with _client(loaded) as client:
        assert client.get(f"/v2/models/m/versions/{version}/ready").json() == {"name": "m", "ready": True}
        assert client.get(f"/v2/models/m/versions/{version}").json()["versions"] == [version]
        reply = client.post(f"/v2/models/m/versions/{version}/infer", json=_infer(["loan"]))
        assert reply.status_code == 200 and reply.json()["model_version"] == version
        assert client.get("/v2/models/m/versions/1/ready").status_code == 404
        assert client.post("/v2/models/m/versions/1/infer", json=_infer(["loan"])).status_code == 404
    with _client(loaded, model_version="1") as client:
        assert client.get("/v2/models/m/versions/1/ready").json()["ready"] is True


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "multipart/form-data; boundary=x"}, {},
                                     {"Content-Type": "application/json", "Content-Encoding": "gzip"}])
def test_prediction_bodies_must_be_declared_json(loaded, headers):
    body = json.dumps({"texts": ["loan"]}).encode()
    with _client(loaded) as client:
        for path, payload in (("/predict", body), ("/v2/models/m/infer", json.dumps(_infer(["loan"])).encode())):
            reply = client.post(path, content=payload, headers=headers)
            assert reply.status_code == 415, (path, headers, reply.text)
        ok = client.post("/predict", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 200


@pytest.mark.parametrize("body, status, message", [
    (_infer(["a"] * 5), 413, "--max-texts"),
    ({"texts": ["a" * 1990]}, 413, "--max-body-bytes"),
    (_infer(["loan", "fee"], shape=[3]), 422, "shape [3] but 2"),
    (_infer(["loan"], shape=[1, 2]), 422, "shape [n] or [n, 1]"),
    (_infer(["loan"], datatype="FP32"), 422, "BYTES"),
    (_infer(["loan"], name="input-0"), 422, "'text'"),
    ({"inputs": []}, 422, "exactly one input"),
    ({"inputs": [{"name": "text"}]}, 422, "not an inference request"),
    (_infer([" "]), 422, "text 0 is empty"),
    (_infer([]), 422, "no texts"),
    (_infer(["x" * 51]), 422, "--max-chars"),
    (_infer([7]), 422, "not a string"),
    ({"texts": "loan"}, 422, '{"texts"'),
    ({"texts": ["loan"], "extra": 1}, 422, '{"texts"'),
])
def test_bad_requests_get_a_json_error(loaded, body, status, message):
    path = "/predict" if "texts" in body else "/v2/models/m/infer"
    with _client(loaded) as client:
        reply = client.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_non_utf8_and_non_json_bodies_get_400(loaded):
    json_type = {"Content-Type": "application/json"}
    with _client(loaded, headers=json_type) as client:
        assert client.post("/predict", content=b'{"texts": ["\xff\xfe"]}').status_code == 400
        assert client.post("/predict", content=b'{"texts": [').json()["error"].startswith("request body is not valid JSON")
        assert client.post("/predict", content=b'{"texts": ["\\ud800"]}').status_code == 400
        assert client.post("/predict", content=b"[" * 1900).status_code == 400  # too deep for the parser
        deep = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [[[[["loan"]]]]]}]}
        assert client.post("/v2/models/m/infer", json=deep).status_code == 422


def test_bearer_token_guards_everything_but_health(loaded):
    with _client(loaded, token=TOKEN) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        for method, path in (("GET", "/v2"), ("GET", "/v2/models/m"), ("GET", "/model-card"), ("GET", "/metrics"),
                             ("POST", "/predict"), ("POST", "/v2/models/m/infer")):
            reply = client.request(method, path, json={"texts": ["loan"]})
            assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer", path
        wrong = client.post("/predict", json={"texts": ["loan"]}, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        right = client.post("/predict", json={"texts": ["loan"]}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200


def test_token_file_must_be_private_and_non_empty(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token(str(path))
    os.chmod(path, 0o600)
    assert read_token(str(path)) == TOKEN
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(str(path))
    monkeypatch.setenv("SECURE_FT_SERVE_TOKEN", TOKEN)
    assert read_token(None) == TOKEN
    with pytest.raises(ConfigError, match="shorter than 16"):
        ServeSettings(model_name="m", token="short")


def test_texts_never_reach_the_logs_unless_enabled(loaded, caplog):
    caplog.set_level(logging.DEBUG)
    with _client(loaded) as client:
        client.post("/predict", json={"texts": [CANARY]}, headers={"X-Request-ID": "req-42"})
        client.post("/v2/models/m/infer", json=_infer([CANARY, "x" * 60]))  # rejected: too long
    access = [r.getMessage() for r in caplog.records if r.name == "secure_ft.serving.access"]
    assert any("request_id=req-42" in line and "status=200" in line and "texts=1" in line for line in access)
    assert any("status=422" in line and "outcome=rejected" in line for line in access)
    assert CANARY not in caplog.text and "xxxxxxxxxx" not in caplog.text
    caplog.clear()
    with _client(loaded, log_texts=True) as client:
        client.post("/predict", json={"texts": [CANARY]})
    assert CANARY in caplog.text


def test_metrics_count_requests_errors_latency_and_batches(loaded):
    with _client(loaded) as client:
        for _ in range(3):
            client.post("/predict", json={"texts": ["loan", "fee"]})
        client.post("/predict", json={"texts": []})
        reply = client.get("/metrics")
    text = reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    assert 'secure_ft_requests_total{method="POST",route="/predict",status="200"} 3.0' in text
    assert 'secure_ft_request_errors_total{route="/predict",status="422"} 1.0' in text
    assert 'secure_ft_request_latency_seconds_count{route="/predict"} 4.0' in text
    assert "secure_ft_batch_size_sum 6.0" in text


def test_a_bundle_is_served_with_its_own_pooling_and_typo_correcting_front_end(tmp_path):
    from fake_run import WORDS
    from secure_ft.text.models import load_trained_model, predict, save_trained_model
    from secure_ft.text.pooling import use_mean_pooling
    from secure_ft.text.spelling import SpellingFrontEnd
    from tiny_models import tiny_bert_folder

    model, tokenizer = load_trained_model(tiny_bert_folder(tmp_path / "base", WORDS, num_labels=3, seed=5))
    assert use_mean_pooling(model, "mean")
    save_trained_model(model, tokenizer, tmp_path / "classifier")
    front_end = SpellingFrontEnd({word: 10 for word in WORDS})
    signed = signed_bundle(tmp_path, model_dir=tmp_path / "classifier", front_end=front_end)
    bundle = load_verified_bundle(signed.bundle, signed.public_key)
    classifier = BundleClassifier.from_bundle(bundle, "cpu")
    assert classifier.model.config.pooling == "mean"

    typos = ["lon chrge on my cerdit card", "morgage paymnet refnd", "lat fea and fruad"]
    corrected = front_end.correct_all(typos)
    assert corrected == ["loan charge on my credit card", "mortgage payment refund", "late fee and fraud"]
    served_model, served_tokenizer = load_trained_model(signed.bundle / "model")  # pooling restored from config.json
    expected = predict(served_model, served_tokenizer, corrected, max_length=128).probabilities.numpy()
    uncorrected = predict(served_model, served_tokenizer, typos, max_length=128).probabilities.numpy()
    with TestClient(create_app(classifier, bundle, ServeSettings(model_name="m"))) as client:
        reply = client.post("/predict", json={"texts": typos}).json()
    np.testing.assert_allclose(np.array(reply["probabilities"]), expected, atol=1e-5, rtol=0)
    assert not np.allclose(uncorrected, expected, atol=1e-3)  # the correction changed what the model read


def test_cpu_forward_passes_follow_the_token_budget_and_keep_the_input_order(loaded, monkeypatch):
    from secure_ft.serving import classifier as classifier_module
    from secure_ft.text.models import predict

    _, classifier = loaded
    texts = [" ".join([TEXTS[index]] * (1 + index % 4)) for index in range(12)]  # 6 to 24 tokens, mixed
    monkeypatch.setattr(classifier_module, "CPU_TOKEN_BUDGET", 40)
    counts = [len(ids) for ids in classifier.tokenizer(texts)["input_ids"]]
    chunks = classifier._chunks(texts)
    assert len(chunks) > 1 and sorted(index for chunk in chunks for index in chunk) == list(range(12))
    assert all(len(chunk) * max(counts[index] for index in chunk) <= 40 for chunk in chunks)
    expected = predict(classifier.model, classifier.tokenizer, texts, max_length=classifier.max_length)
    np.testing.assert_allclose(classifier.probabilities(texts), expected.probabilities.numpy(), atol=1e-5, rtol=0)


def test_queued_texts_past_the_limit_get_503_with_retry_after(loaded):
    import dataclasses
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    bundle, classifier = loaded
    release = threading.Event()
    slow = dataclasses.replace(classifier)
    slow.probabilities = lambda texts: (release.wait(30), classifier.probabilities(texts))[1]  # a busy model
    app = create_app(slow, bundle, ServeSettings(model_name="m", max_texts=4, max_queued_texts=4))
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/predict", json={"texts": ["loan"] * 4})
        deadline = time.monotonic() + 30
        while app.state.batcher.queued_texts < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = client.post("/predict", json={"texts": ["fee"]})
        release.set()
        assert first.result(timeout=60).status_code == 200
        metrics = client.get("/metrics").text
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "--max-queued-texts" in refused.json()["error"]
    assert "secure_ft_overloaded_total 1.0" in metrics
