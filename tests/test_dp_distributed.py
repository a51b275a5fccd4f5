"""Central DP on 2 CPU processes (torchrun, gloo) matches the single-process run: same ε, same model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from dp_helpers import dp_config, without_dropout
from tiny_models import tiny_bert_folder
from secure_ft.training.central_run import train_run
from toy_data import VOCAB, toy_frame


def run_torchrun(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """torchrun in its own process group, killed with all its workers if it overruns or the test fails."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


@pytest.mark.slow
def test_two_process_dp_run_matches_the_single_process_run(tmp_path):
    # no dropout: then the two runs consume the same random numbers (batches and noise) in the same order
    model_dir = without_dropout(tiny_bert_folder(tmp_path / "tiny", VOCAB, num_labels=3))
    toy_frame().to_csv(tmp_path / "data.csv", index=False)
    config = dp_config(tmp_path / "data.csv", model_dir, tmp_path / "single", transfer="full", epochs=1)
    single = train_run(config, progress=False)

    (tmp_path / "run.yaml").write_text(config.to_yaml())
    finished = run_torchrun(["-m", "secure_ft.distributed", "--config", str(tmp_path / "run.yaml"),
                             "--run-dir", str(tmp_path / "multi"), "--no-progress"], cwd=tmp_path, timeout=240)
    assert finished.returncode == 0, finished.stdout[-3000:]
    multi_dir = tmp_path / "multi"

    one = json.loads((single.run_dir / "privacy.json").read_text())
    two = json.loads((multi_dir / "privacy.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for key in ("epsilon", "steps", "sample_rate", "noise_multiplier", "delta", "epsilon_history"):
        assert two[key] == one[key], key  # ε comes from the global batch: identical accounting
    assert json.loads((multi_dir / "metrics.json").read_text())["steps"] == single.metrics["steps"] == 6

    # the union of the two shards is the single-process Poisson batch, and rank 0 draws the same noise
    a = load_file(single.model_dir / "model.safetensors")
    b = load_file(multi_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(float((a[k] - load_file(model_dir / "model.safetensors")[k]).abs().max()) > 1e-3
               for k in a if k in load_file(model_dir / "model.safetensors"))  # and it did train
    assert yaml.safe_load((multi_dir / "config.yaml").read_text())["privacy"]["mode"] == "dp"
