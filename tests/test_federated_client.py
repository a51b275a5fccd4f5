"""The site side: what a site sends (LoRA: adapters + head only), how it refuses a mismatch, its own data file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from federated import protocol
from federated.client_app import app
from federated.site_data import load_site_file
from federated.task import (arrays_to_record, base_model_sha256, build_model, load_arrays, record_bytes,
                            record_to_arrays, trainable_arrays)
from secure_ft.errors import DataError, ModelError
from secure_ft.records.config import RunConfig
from secure_ft.text.models import trainable_parameter_count
from toy_data import toy_frame

LABELS = ["cards", "loans", "reports"]


@pytest.fixture
def lora_config(toy_config) -> RunConfig:
    config = toy_config.model_copy(deep=True)
    config.model.transfer = "lora"
    config.federated.num_sites = 2
    config.federated.partition = "iid"
    return config


def instructions(config: RunConfig, server_round: int = 1, **extra) -> ConfigRecord:
    return ConfigRecord({protocol.RUN_CONFIG: config.to_yaml().encode(), protocol.SERVER_ROUND: server_round,
                         protocol.LABELS: json.dumps(LABELS),
                         protocol.BASE_MODEL_SHA256: base_model_sha256(config.model), **extra})


def site_context(tmp_path, partition: int = 0) -> Context:
    return Context(run_id=5, node_id=100 + partition, node_config={protocol.PARTITION_ID: partition,
                                                                 protocol.NUM_PARTITIONS: 2},
                   state=RecordDict(), run_config={})


def train_message(arrays: dict, config_record: ConfigRecord) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, SUPERLINK_NODE_ID, 1
    message = Message(content=RecordDict({protocol.ARRAYS: arrays_to_record(arrays), protocol.CONFIG: config_record}),
                      dst_node_id=100, message_type="train")
    message.metadata.__dict__["_message_id"] = "m-1"
    return message


def test_lora_sites_exchange_only_adapters_and_head(lora_config, tmp_path):
    model, _ = build_model(lora_config, LABELS)
    sent = trainable_arrays(model)
    assert sent and all(".lora_A." in name or ".lora_B." in name or "modules_to_save" in name for name in sent)
    assert any("classifier" in name for name in sent) and any(".lora_B." in name for name in sent)
    assert sum(value.size for value in sent.values()) == trainable_parameter_count(model)[0]
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen and not frozen & set(sent)  # the base encoder never travels

    full_config = lora_config.model_copy(deep=True)
    full_config.model.transfer = "full"
    full_model, _ = build_model(full_config, LABELS)
    assert record_bytes(sent) < record_bytes(trainable_arrays(full_model)) / 2

    reply = app(message=train_message(sent, instructions(lora_config, **{protocol.RUN_DIR: str(tmp_path)})),
                context=site_context(tmp_path))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    returned = record_to_arrays(reply.content[protocol.ARRAYS])
    assert set(returned) == set(sent)
    assert any(not np.allclose(returned[name], sent[name]) for name in sent)  # the site trained
    metrics = reply.content[protocol.METRICS]
    assert metrics[protocol.NUM_EXAMPLES] > 0 and metrics[protocol.LOCAL_STEPS] > 0
    assert protocol.EPSILON not in metrics  # privacy.mode none: no ε to report
    assert reply.content[protocol.SITE][protocol.SITE_NAME] == "site-1"
    assert (tmp_path / "sites" / "site-1" / "ledger.jsonl").is_file()


def test_a_site_refuses_weights_for_another_model(lora_config):
    model, _ = build_model(lora_config, LABELS)
    arrays = trainable_arrays(model)
    wrong = dict(arrays)
    name = next(iter(wrong))
    wrong[name] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ModelError, match="shape"):
        load_arrays(model, wrong)
    with pytest.raises(ModelError, match="missing"):
        load_arrays(model, {key: value for key, value in arrays.items() if key != name})


def test_a_site_with_another_base_model_fails_with_its_name(lora_config, tmp_path):
    model, _ = build_model(lora_config, LABELS)
    record = instructions(lora_config, **{protocol.RUN_DIR: str(tmp_path)})
    record[protocol.BASE_MODEL_SHA256] = "0" * 64
    with pytest.raises(Exception) as raised:
        app(message=train_message(trainable_arrays(model), record), context=site_context(tmp_path, partition=1))
    assert "site site-2" in str(raised.value) and "base model" in str(raised.value)


def test_a_deployed_site_reads_its_own_file_with_the_run_label_numbering(lora_config, tmp_path):
    frame = toy_frame(rows_per_class=20, seed=5)
    frame = frame[frame["product"] != "cards"]  # this site has no 'cards' complaints at all
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    site = load_site_file(path, lora_config, LABELS, "hospital-a")
    both = pd.concat([site.train, site.validation])
    assert set(both["label_name"]) == {"loans", "reports"}
    assert (both["label"] == both["label_name"].map({"cards": 0, "loans": 1, "reports": 2})).all()
    assert len(both) == 40 and len(site.validation) > 0

    frame.loc[frame.index[0], "product"] = "insurance"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="declared set"):
        load_site_file(path, lora_config, LABELS, "hospital-a")


def test_a_site_file_outside_the_label_set_or_without_the_column_names_site_file_and_labels(lora_config, tmp_path):
    frame = toy_frame(rows_per_class=20, seed=5)
    frame.loc[frame.index[3], "product"] = "insurance"
    path = tmp_path / "ward-7.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as raised:
        load_site_file(path, lora_config, LABELS, "hospital-a")
    message = str(raised.value)
    assert "site hospital-a" in message and str(path) in message and "insurance" in message
    assert str(LABELS) in message
    frame.drop(columns=["product"]).to_csv(path, index=False)
    with pytest.raises(DataError) as raised:
        load_site_file(path, lora_config, LABELS, "hospital-a")
    assert "site hospital-a" in str(raised.value) and "'product'" in str(raised.value) and str(path) in str(raised.value)
