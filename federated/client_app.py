"""The ClientApp: what runs at every site (Flower Message API).

``train``: load the global tensors, fine-tune on the site's own rows through the product's
training loop (with DP-SGD when ``privacy.mode: dp``), reply with the site's new tensors and
its metrics (ε included) and, with DP, its signed released history (the odometer's statement). ``evaluate``: score the global tensors on the site's validation
rows. The SecAgg+ mode (`federated.secagg`) reaches the same ``train`` function through
Flower's legacy messages; `secagg_when_requested` routes those.

A site that fails replies with an error naming itself, the rule it broke and counts — never
its data (`federated.site_errors`); the server logs it and the round goes on without it
(``federated.accept_failures``).
"""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import protocol
from federated.secagg import is_legacy_fit, secagg_when_requested, train_legacy
from federated.site_privacy import encode_site_privacy
from federated.site_training import evaluate_site, read_instructions, train_site_round
from federated.task import arrays_to_record, record_to_arrays

log = logging.getLogger(__name__)

app = ClientApp()


@app.lifespan()
def lifespan(context: Context):
    """Before any message: make the site's log lines reach the SuperNode's log."""
    protocol.route_logs_through_flower()
    yield


@app.train(mods=[secagg_when_requested])
def train(msg: Message, context: Context) -> Message:
    """Train the global model on this site's rows for one round."""
    if is_legacy_fit(msg):
        return train_legacy(msg, context)
    instructions = read_instructions(msg.content[protocol.CONFIG], context.node_config)
    global_arrays = record_to_arrays(msg.content[protocol.ARRAYS])
    report = train_site_round(instructions, global_arrays, context.node_config, context.run_id)
    return Message(content=_reply(report.site, report.metrics, arrays_to_record(report.arrays), report.privacy,
                                  report.statement), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this site's validation rows."""
    instructions = read_instructions(msg.content[protocol.CONFIG], context.node_config)
    global_arrays = record_to_arrays(msg.content[protocol.ARRAYS])
    report = evaluate_site(instructions, global_arrays, context.node_config, context.run_id)
    return Message(content=_reply(report.site, report.metrics), reply_to=msg)


def _reply(site: str, metrics: dict[str, float], arrays: ArrayRecord | None = None,
           privacy: dict | None = None, statement: dict | None = None) -> RecordDict:
    site_record = {protocol.SITE_NAME: site}
    if privacy is not None:  # the accountant inputs, so the coordinator can recompute this site's ε
        site_record[protocol.SITE_PRIVACY] = encode_site_privacy(privacy)
    if statement is not None:  # the whole released history, signed (`secure_ft.privacy.signed_history`)
        site_record[protocol.SITE_STATEMENT] = json.dumps(statement, sort_keys=True)
    content = RecordDict({protocol.METRICS: MetricRecord(metrics), protocol.SITE: ConfigRecord(site_record)})
    if arrays is not None:
        content[protocol.ARRAYS] = arrays
    return content
