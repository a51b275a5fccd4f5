"""What the server and the sites say to each other: record and key names, in one place.

Server → site (``train`` and ``evaluate`` messages)::

    "arrays"  ArrayRecord   the global model's exchanged tensors (see `federated.task`)
    "config"  ConfigRecord  server-round, run-config (the run's YAML as UTF-8 bytes),
                            labels (JSON list: the label set and its numbering),
                            run-dir (simulation only), secure-ft-version,
                            base-model-sha256, front-end-sha256 (the spelling
                            front end's identity, when there is one), proximal-mu (FedProx),
                            federation-id (the run's id, the same after a resume)

Site → server (reply)::

    "arrays"  ArrayRecord   train only: the site's new tensors (never its data)
    "metrics" MetricRecord  num-examples, train-loss, local-steps, local-val-accuracy,
                            seconds; epsilon and delta when the site trains with DP
    "site"    ConfigRecord  name: the site's name, for logs and the run's records;
                            privacy (train, with DP): its accountant inputs as JSON
                            (`federated.site_privacy`)

A site's node config (``flower-supernode --node-config``) says where its data is:

    data-path   its labelled file (deployment); site-name its name; state-dir where it
                keeps its own privacy ledger and logs (default: ~/.secure-ft/sites/<name>)
    partition-id / num-partitions   set by Flower's simulation engine instead
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"

# config keys (server → site)
SERVER_ROUND = "server-round"
RUN_CONFIG = "run-config"
LABELS = "labels"
RUN_DIR = "run-dir"
VERSION = "secure-ft-version"
BASE_MODEL_SHA256 = "base-model-sha256"
FRONT_END_SHA256 = "front-end-sha256"
PROXIMAL_MU = "proximal-mu"
# the run's id, fixed when it starts and kept when the coordinator resumes it (a new Flower run
# id each time): a site keys what it spent on a run by this, never by Flower's run id
FEDERATION_ID = "federation-id"

# metric keys (site → server)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
LOCAL_STEPS = "local-steps"
LOCAL_VAL_ACCURACY = "local-val-accuracy"
SECONDS = "seconds"
EPSILON = "epsilon"
DELTA = "delta"
ACCURACY = "accuracy"
MACRO_F1 = "macro-f1"
# added by the server before aggregation: the weight each reply gets (see update_validation)
AGGREGATION_WEIGHT = "aggregation-weight"

# site record keys
SITE_NAME = "name"
SITE_PRIVACY = "privacy"

# node config keys
DATA_PATH = "data-path"
SITE_NAME_KEY = "site-name"
STATE_DIR = "state-dir"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

def route_logs_through_flower() -> None:
    """Send this package's log lines through Flower's handlers when Flower runs the app.

    Under ``flwr run`` the ServerApp and ClientApps are separate processes whose output Flower
    collects from its own ``flwr`` logger (``flwr run --stream``, the SuperNode's log); without
    this the per-round summaries and site messages would be lost. Does nothing when the
    process already has logging set up (the CLI, tests).
    """
    import logging

    ours, root, flower = logging.getLogger("federated"), logging.getLogger(), logging.getLogger("flwr")
    if ours.handlers or root.handlers or not flower.handlers:
        return
    for handler in flower.handlers:
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)


# per-site persistent state in Flower's Context.state
ENGINE_STATE = "secure-ft-engine-state"
SITE_SIGMA = "secure-ft-site-sigma"
