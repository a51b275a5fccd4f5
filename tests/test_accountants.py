"""One accountants module: σ calibrated the same way for central runs and sites; unusable accountants are config errors."""

from __future__ import annotations

import pytest
from opacus.accountants.utils import get_noise_multiplier

from secure_ft.errors import ConfigError, PrivacyError
from secure_ft.privacy.accountants import (ACCOUNTANTS, BudgetUnreachable, calibrate_noise, epsilon_from_history,
                                           get_accountant, require_usable_at_sites)
from secure_ft.records.config import config_from_dict


@pytest.mark.parametrize("name", ["prv", "rdp"])
def test_calibration_is_opacus_own_search(name):
    ours = calibrate_noise(name, target_epsilon=8.0, delta=1e-5, sample_rate=0.12, epochs=4)
    theirs = get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=0.12, epochs=4, accountant=name)
    assert ours == theirs
    spent = epsilon_from_history(name, ((ours, 0.12, int(4 / 0.12)),), 1e-5)
    assert spent <= 8.0 + get_accountant(name).eps_error


def test_gdp_calibration_reaches_its_target():
    sigma = calibrate_noise("gdp", target_epsilon=3.0, delta=1e-5, sample_rate=0.1, epochs=2)
    assert epsilon_from_history("gdp", ((sigma, 0.1, 20),), 1e-5) <= 3.0


def test_an_unreachable_budget_says_so():
    with pytest.raises(BudgetUnreachable):
        calibrate_noise("rdp", target_epsilon=1e-6, delta=1e-12, sample_rate=1.0, epochs=1000)


def test_unknown_accountant_is_named():
    with pytest.raises(PrivacyError, match="use one of prv, rdp, gdp"):
        get_accountant("moments")


def test_gdp_at_a_federated_site_is_a_config_error_not_a_silent_swap(toy_csv):
    assert not ACCOUNTANTS["gdp"].usable_at_sites
    with pytest.raises(ConfigError, match="cannot be used at a federated site") as raised:
        require_usable_at_sites("gdp")
    assert raised.value.exit_code == 2
    from federated.site_engine import site_noise_multiplier

    config = config_from_dict({"data": {"source": str(toy_csv)}, "privacy": {"accountant": "gdp"},
                               "mode": "federated"})
    with pytest.raises(ConfigError, match="privacy.accountant"):
        site_noise_multiplier(config, 40)


def test_remembered_rdp_gives_opacus_own_epsilon_bit_for_bit():
    """ε after each epoch reuses the one-step RDP values (secure_ft.privacy.accountants.memoized_rdp), exactly."""
    from opacus.accountants import create_accountant
    from opacus.accountants.analysis import rdp

    from secure_ft.privacy.accountants import _remembering_compute_rdp

    original = rdp._compute_rdp
    histories = [((1.1, 0.09, 11),), ((1.1, 0.09, 22),), ((1.1, 0.09, 22), (0.9, 0.2, 5))]
    for accountant in ("prv", "rdp"):
        for history in histories:
            meter = create_accountant(mechanism=accountant)
            meter.history = list(history)
            theirs = float(meter.get_epsilon(delta=1e-5))  # Opacus alone, nothing remembered
            assert epsilon_from_history(accountant, history, 1e-5) == theirs, (accountant, history)
    assert rdp._compute_rdp is original  # the remembering version is in place only inside the block
    remembered = _remembering_compute_rdp().cache_info()
    assert remembered.hits > remembered.misses  # later epochs and the domain bound reused the one-step values
