"""Bad DP settings and models DP-SGD cannot train fail early with a clear message."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from dp_helpers import dp_config
from secure_ft.cli import main
from secure_ft.errors import ConfigError, PrivacyError
from secure_ft.privacy.engine import PrivateEngine, make_compatible
from secure_ft.records.config import PrivacyConfig, load_config
from secure_ft.training.central_run import train_run
from toy_data import toy_frame


@pytest.mark.parametrize("field, value, needle", [
    ("target_epsilon", 0, "target_epsilon must be a finite number > 0"),
    ("target_epsilon", -2.0, "target_epsilon must be a finite number > 0"),
    ("max_grad_norm", -1.0, "max_grad_norm (the per-sample clipping norm) must be"),
    ("noise_multiplier", 0.0, "noise_multiplier must be a finite number > 0"),
    ("target_delta", 1.0, "target_delta must lie strictly between 0 and 1"),
    ("grad_sample_mode", "fastest", "privacy.grad_sample_mode"),
])
def test_bad_privacy_values_are_config_errors(tmp_path, field, value, needle):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"privacy": {field: value}}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert needle in str(error.value) and f"privacy.{field}" in str(error.value) and str(path) in str(error.value)


def test_bad_epsilon_on_the_command_line_is_exit_code_2(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"privacy": {"target_epsilon": 0}}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "target_epsilon" in err and "Traceback" not in err


def test_delta_not_below_one_over_n_is_refused(tmp_path, tiny_model_dir):
    toy_frame().to_csv(tmp_path / "data.csv", index=False)
    config = dp_config(tmp_path / "data.csv", tiny_model_dir, tmp_path / "runs", target_delta=0.02)  # N = 84
    with pytest.raises(PrivacyError, match=r"target_delta = 0.02 is not below 1/N = 0.0119.* N = 84"):
        train_run(config, progress=False)
    with pytest.raises(PrivacyError, match="not below 1/N"):
        PrivateEngine(PrivacyConfig(target_delta=1e-3), dataset_size=1000)
    assert PrivateEngine(PrivacyConfig(target_delta=None), dataset_size=1000).delta == pytest.approx(1e-5)  # capped
    assert PrivateEngine(PrivacyConfig(target_delta=None), dataset_size=10**6).delta == pytest.approx(1e-7)


def test_secure_mode_without_a_secure_generator_is_refused():
    with pytest.raises(PrivacyError, match="torchcsprng"):
        PrivateEngine(PrivacyConfig(secure_mode=True), dataset_size=100)


class BufferedLinear(nn.Linear):
    """A trainable layer with a buffer: Opacus cannot keep that buffer private."""

    def __init__(self):
        super().__init__(4, 2)
        self.register_buffer("running_scale", torch.ones(2))

    def forward(self, x):
        return super().forward(x) * self.running_scale


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def test_module_opacus_cannot_handle_is_a_privacy_error():
    model = nn.Sequential(nn.Linear(4, 4), BufferedLinear()).train()
    with pytest.raises(PrivacyError, match="cannot compute per-sample gradients.*buffers"):
        make_compatible(model, _optimizer(model))


def test_fixable_modules_are_replaced_and_the_optimizer_follows():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    optimizer = _optimizer(model)
    fixed, new_optimizer = make_compatible(model, optimizer)
    assert not any(isinstance(module, nn.BatchNorm1d) for module in fixed.modules())
    assert any(isinstance(module, nn.GroupNorm) for module in fixed.modules())
    trained = {id(p) for group in new_optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in fixed.parameters()} and new_optimizer.defaults["lr"] == 1e-3


def test_ghost_clipping_refuses_tied_parameters():
    from secure_ft.privacy.engine import choose_grad_sample_mode

    embedding = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = nn.ModuleDict({"embedding": embedding, "head": head})
    with pytest.raises(PrivacyError, match="tied parameters"):
        choose_grad_sample_mode(model, "ghost")
    mode, reason = choose_grad_sample_mode(model, "auto")
    assert mode == "hooks" and "tied" in reason
