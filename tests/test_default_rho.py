"""Each SAM-family method's own default ρ applies when the config leaves rho unset."""

from __future__ import annotations

import pytest

from msam_core.config import TrainConfig
from msam_core.data import load_dataset
from msam_core.methods import build_method
from msam_core.models import build_model


def _method(name: str, **config):
    data = load_dataset("synthetic", n_train=8, n_val=8, n_test=8)
    model = build_model(data.modalities, data.num_classes)
    return build_method(name, model, TrainConfig.from_dict({"method": name, **config}))


@pytest.mark.parametrize(("name", "rho"), [("msam", 1.0), ("sam", 0.05), ("asam", 0.05)])
def test_an_unset_rho_is_the_methods_default(name, rho):
    method = _method(name)
    assert TrainConfig().rho is None
    assert method.rho == rho
    assert all(g["rho"] == rho for g in method.optimizer.param_groups)


def test_a_given_rho_wins_and_a_bad_one_is_refused():
    method = _method("msam", rho=0.3)
    assert method.rho == 0.3 and method.optimizer.param_groups[0]["rho"] == 0.3
    with pytest.raises(ValueError, match="rho must be"):
        TrainConfig(rho=-1.0)
