"""`secure-ft serve` as a real process on a loopback port, spoken to over HTTP.

Served predictions equal the bundle loaded in-process; a tampered bundle and a wrong public
key make the command exit 4 without ever listening; an oversized request is refused with
413; 200 requests from 16 concurrent clients all succeed (and share forward passes).
"""

from __future__ import annotations

import asyncio
import re
import shutil

import httpx
import numpy as np
import pytest

from fake_run import TEXTS
from secure_ft.models import load_trained_model, predict
from secure_ft.text_front_end import load_text_front_end
from serve_helpers import port_is_open, serve_processes, signed_bundle

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


@pytest.mark.slow  # a fresh interpreter imports torch before it can refuse (~5-8 s on 2 cores)
def test_a_bundle_with_one_changed_byte_is_not_served(signed, start_server, tmp_path):
    tampered = shutil.copytree(signed.bundle, tmp_path / "tampered")
    weights = tampered / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0x01
    weights.write_bytes(bytes(data))
    _assert_refused_without_listening(start_server(tampered, "--public-key", str(signed.public_key)),
                                      "model.safetensors")


@pytest.mark.slow
def test_a_wrong_public_key_is_not_served(signed, start_server, tmp_path):
    from secure_ft.keys import generate_key_pair

    _, other = generate_key_pair(tmp_path / "other")
    _assert_refused_without_listening(start_server(signed.bundle, "--public-key", str(other)), "not trusted")
