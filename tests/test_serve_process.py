"""`secure-ft serve` as a real process on a loopback port, spoken to over HTTP(S).

Served predictions equal the bundle loaded in-process; a tampered bundle and a wrong public
key make the command exit 4 without ever listening; an oversized request is refused with
413; 200 requests from 16 concurrent clients all succeed (and share forward passes); with
TLS and a bearer token, a client trusting the CA (and holding the token) is answered while
plain HTTP and untrusting clients are not; the process never imports training or audit code;
the official Triton client (``tritonclient[http]``) works with its binary defaults and with JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import textwrap

import httpx
import numpy as np
import pytest

from fake_run import TEXTS
from secure_ft.text.models import load_trained_model, predict
from secure_ft.text.text_front_end import load_text_front_end
from serve_helpers import REPO, make_tls_files, port_is_open, serve_processes, signed_bundle

MAX_TEXTS = 8
MAX_BODY = 4096


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    return signed_bundle(tmp_path_factory.mktemp("serve-bundle"))


@pytest.fixture(scope="module")
def server(signed, tmp_path_factory):
    with serve_processes(tmp_path_factory.mktemp("serve-logs")) as start:
        running = start(signed.bundle, "--public-key", str(signed.public_key), "--model-name", "complaints",
                        "--max-texts", str(MAX_TEXTS), "--max-body-bytes", str(MAX_BODY))
        running.wait_ready()
        yield running


@pytest.fixture
def start_server(tmp_path):
    with serve_processes(tmp_path) as start:
        yield start


def _infer_body(texts, request_id="r"):
    return {"id": request_id, "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def test_served_predictions_equal_the_bundle_loaded_in_process(signed, server):
    model, tokenizer = load_trained_model(signed.bundle / "model")
    texts = load_text_front_end(signed.bundle / "model")(TEXTS)
    expected = predict(model, tokenizer, texts, max_length=128).probabilities.numpy()
    labels = [model.config.id2label[i] for i in expected.argmax(-1)]
    assert len(TEXTS) == 20

    async def one_by_one():  # concurrent single-text requests: rows come from shared, padded batches
        async with httpx.AsyncClient(base_url=server.url) as client:
            replies = await asyncio.gather(*(client.post("/v2/models/complaints/infer", json=_infer_body([t], str(i)))
                                             for i, t in enumerate(TEXTS)))
        return [reply.json() for reply in replies]

    replies = asyncio.run(one_by_one())
    assert [reply["id"] for reply in replies] == [str(i) for i in range(20)]
    outputs = [{out["name"]: out for out in reply["outputs"]} for reply in replies]
    assert [out["label"]["data"][0] for out in outputs] == labels
    assert all(out["probabilities"]["shape"] == [1, 3] and out["probabilities"]["datatype"] == "FP32"
               for out in outputs)
    served = np.array([out["probabilities"]["data"] for out in outputs])
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)

    whole = httpx.post(f"{server.url}/predict", json={"texts": TEXTS[:MAX_TEXTS]}).json()
    assert whole["labels"] == labels[:MAX_TEXTS]
    np.testing.assert_allclose(np.array(whole["probabilities"]), expected[:MAX_TEXTS], atol=1e-5, rtol=0)


def test_oversized_requests_get_413(server):
    too_many = httpx.post(f"{server.url}/v2/models/complaints/infer", json=_infer_body(["loan fee"] * (MAX_TEXTS + 1)))
    assert too_many.status_code == 413 and "--max-texts" in too_many.json()["error"]
    too_large = httpx.post(f"{server.url}/predict", json={"texts": ["x" * (MAX_BODY + 10)]})
    assert too_large.status_code == 413 and "--max-body-bytes" in too_large.json()["error"]


def test_200_requests_from_16_concurrent_clients_all_succeed(server):
    async def clients():
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(200):
            queue.put_nowait(index)
        statuses: list[int] = []

        async def client_loop(client):
            while not queue.empty():
                index = queue.get_nowait()
                reply = await client.post("/predict", json={"texts": [TEXTS[index % 20]]})
                statuses.append(reply.status_code)

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(16)))
        return statuses

    statuses = asyncio.run(clients())
    assert statuses == [200] * 200
    assert not any(text in server.output for text in TEXTS)  # the access log holds no texts
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = float(re.search(r"^secure_ft_batch_size_count (\S+)$", metrics, re.M).group(1))
    texts = float(re.search(r"^secure_ft_batch_size_sum (\S+)$", metrics, re.M).group(1))
    assert texts >= 200 and batches < texts  # concurrent requests shared forward passes


def _assert_refused_without_listening(server, file_named: str) -> None:
    assert server.wait_exit() == 4, server.output
    output = server.output
    assert "error:" in output and file_named in output
    assert "Uvicorn running" not in output and "Started server" not in output
    assert not port_is_open(server.port)


def test_a_bundle_with_one_changed_byte_is_not_served(signed, start_server, tmp_path):
    tampered = shutil.copytree(signed.bundle, tmp_path / "tampered")
    weights = tampered / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0x01
    weights.write_bytes(bytes(data))
    _assert_refused_without_listening(start_server(tampered, "--public-key", str(signed.public_key)),
                                      "model.safetensors")


def test_a_wrong_public_key_is_not_served(signed, start_server, tmp_path):
    from secure_ft.release.keys import generate_key_pair

    _, other = generate_key_pair(tmp_path / "other")
    _assert_refused_without_listening(start_server(signed.bundle, "--public-key", str(other)), "not trusted")


def test_tls_and_bearer_token_answer_only_trusting_clients_with_the_token(signed, start_server, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    token = "serve-test-token-0123456789abcdef"
    token_file = tmp_path / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n")
    server = start_server(signed.bundle, "--public-key", str(signed.public_key), "--model-name", "complaints",
                          "--ssl-certfile", str(tls.certificate), "--ssl-keyfile", str(tls.key),
                          "--token-file", str(token_file), tls_ca=tls.ca)
    server.wait_ready()  # over HTTPS, verifying the server against the throw-away CA
    assert server.url.startswith("https://")

    with httpx.Client(base_url=server.url, verify=server.verify, timeout=30) as client:
        reply = client.post("/predict", json={"texts": TEXTS[:2]}, headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200 and len(reply.json()["labels"]) == 2
        infer = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": TEXTS[:1]}]}
        assert client.post("/v2/models/complaints/infer", json=infer).status_code == 401
        wrong = client.get("/model-card", headers={"Authorization": f"Bearer {token[:-1]}x"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "missing or wrong bearer token"}
        assert client.get("/v2/health/ready").json() == {"ready": True}  # health needs no token
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # a client without the CA
        httpx.get(f"{server.url}/v2/health/live", verify=ssl.create_default_context())
    with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets no HTTP answer
        httpx.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=10)
    assert token not in server.output


_IMPORTED_MODULES = textwrap.dedent("""
    import json, sys
    import uvicorn

    def report_instead_of_listening(server, *args, **options):  # the real command up to the point it would listen
        print(json.dumps(sorted(sys.modules)))

    uvicorn.Server.run = report_instead_of_listening
    from secure_ft.cli import main
    sys.exit(main(["serve", sys.argv[1], "--public-key", sys.argv[2], "--device", "cpu"]))
""")
NOT_FOR_SERVING = ("opacus", "textattack", "flwr", "fairlearn", "sklearn", "scipy", "datasets", "pandas", "peft",
                   "matplotlib", "nltk", "flair", "ray", "federated", "audits.robustness", "audits.fairness",
                   "audits.privacy", "audits.performance", "audits.registry", "secure_ft.training.training_loop",
                   "secure_ft.training.central_run", "secure_ft.privacy", "secure_ft.pipeline.main_job", "secure_ft.pipeline.report",
                   "secure_ft.distributed", "secure_ft.training.probe", "secure_ft.training.robust_training", "secure_ft.text.augmentation")


def test_the_serving_process_imports_no_training_audit_or_attack_code(signed):
    done = subprocess.run([sys.executable, "-c", _IMPORTED_MODULES, str(signed.bundle), str(signed.public_key)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"torch", "transformers", "secure_ft.serving.app", "audits.gate"} <= modules  # it did load and verify
    assert sorted(name for name in modules
                  if any(name == banned or name.startswith(banned + ".") for banned in NOT_FOR_SERVING)) == []


def test_the_official_triton_client_works_with_its_binary_defaults_and_with_json(server):
    import tritonclient.http as triton

    texts = TEXTS[:3]
    expected = httpx.post(f"{server.url}/predict", json={"texts": texts}, timeout=30).json()
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    try:
        version = client.get_model_metadata("complaints")["versions"][0]
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("complaints") and client.is_model_ready("complaints", version)
        assert not client.is_model_ready("complaints", "1") and not client.is_model_ready("other")
        # the client's defaults: binary tensor data in and out (Inference-Header-Content-Length)
        tensor = triton.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(np.array(texts, dtype=object))
        result = client.infer("complaints", [tensor])
        assert [label.decode() for label in result.as_numpy("label")] == expected["labels"]
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
        # JSON tensors of shape [n, 1] on the version route; the label comes back as [n, 1]
        tensor = triton.InferInput("text", [3, 1], "BYTES")
        tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(3, 1), binary_data=False)
        outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("label", "probabilities")]
        result = client.infer("complaints", [tensor], model_version=version, outputs=outputs,
                              headers={"Content-Type": "application/json"})
        labels = result.as_numpy("label")
        assert labels.shape == (3, 1) and [str(label) for label in labels.ravel()] == expected["labels"]
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-6)
    finally:
        client.close()
