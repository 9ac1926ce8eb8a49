"""GH's score moving average decays as much over each phase of a run as over the same phase of the reference's.

[GH] train_cifar.py updates every sample's average once per epoch with beta = 0.9 for the 499 warm-up epochs
after the first and beta = 0.999 for the 500 after it: 0.999^500 = 0.606 of the average at the end of the
warm-up survives to the end of the run. Expected values below are that formula written out.
"""

import pytest
import torch

from duel.data.datasets import Batch
from duel.errors import ConfigError
from duel.methods import DataInfo, StepOutput, build_method
from duel.validation import parse_config

SURVIVING_AFTER_WARMUP = 0.999**500  # = 0.6064, the reference's; unscaled, 200 epochs would keep 0.999^100 = 0.905


def gh(**kwargs):
    cfg = parse_config({"pretrain": {"proj_dim": 16, "method_kwargs": {"gh": {"num_targets": 4, **kwargs}}}})
    return build_method("gh", cfg.pretrain, DataInfo(1, 1))


def test_the_references_surviving_weight_written_out():
    assert pytest.approx(0.6064, abs=1e-4) == SURVIVING_AFTER_WARMUP
    assert pytest.approx(0.9048, abs=1e-4) == 0.999**100  # what an unscaled 0.999 keeps over 100 epochs


def test_the_reference_length_keeps_the_references_momenta():
    assert gh().momenta(1000) == (0.9, 0.999)
    method = gh()
    method.on_epoch_start(499, 1000)  # the last warm-up epoch ([GH] `if epoch >= args.warm_up: beta = args.beta`)
    assert method.ema == 0.9
    method.on_epoch_start(500, 1000)
    assert method.ema == 0.999


@pytest.mark.parametrize(
    ("epochs", "warmup_updates", "after_updates"),
    [(200, 99, 100), (201, 99, 101), (7, 3, 3), (2000, 999, 1000)],  # round(0.5 * epochs) warm-up epochs
)
def test_each_phase_keeps_the_references_surviving_weight(epochs, warmup_updates, after_updates):
    during, after = gh().momenta(epochs)
    assert after**after_updates == pytest.approx(SURVIVING_AFTER_WARMUP, rel=1e-9)
    assert during**warmup_updates == pytest.approx(0.9**499, rel=1e-9, abs=0)  # warm-up: 499 updates after epoch 0


def test_two_hundred_epochs_per_visit_values():
    during, after = gh().momenta(200)
    assert after == pytest.approx(0.999**5, rel=1e-12)  # 500 reference visits over our 100
    assert after == pytest.approx(0.995010, abs=1e-6)
    assert during == pytest.approx(0.9 ** (499 / 99), rel=1e-12)  # 499 reference updates over our 99
    assert during == pytest.approx(0.587982, abs=1e-6)


def test_a_simulated_run_keeps_0_606_of_the_warmup_average():
    """200 epochs, one sample seen once an epoch: the average ends with 0.999^500 of its end-of-warm-up value."""
    method, epochs = gh(), 200
    batch = Batch(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.tensor([0]), torch.tensor([0]))
    warm, after = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    for epoch in range(epochs):
        method.on_epoch_start(epoch, epochs)
        scores = warm if epoch < 100 else after
        method.after_step(StepOutput(torch.tensor(0.0), torch.zeros(1), aux={"scores": scores}), batch, epoch, epochs)
    kept = float(method.score_ema[0, 0])
    assert kept == pytest.approx(SURVIVING_AFTER_WARMUP, rel=1e-4)
    assert float(method.score_ema[0, 1]) == pytest.approx(1 - SURVIVING_AFTER_WARMUP, rel=1e-4)


def test_a_phase_the_reference_lacks_uses_the_length_ratio():
    # warmup 0 ([GH] --warm_up 0 has no warm-up either): the after-phase has 1000 reference visits to our 3
    during, after = gh(warmup=0.0).momenta(3)
    assert after**3 == pytest.approx(0.999**1000, rel=1e-9)
    assert during == pytest.approx(0.9 ** (1000 / 3), rel=1e-9, abs=0)


def test_reference_epochs_zero_keeps_the_momenta_per_visit():
    assert gh(reference_epochs=0).momenta(200) == (0.9, 0.999)
    assert gh(reference_epochs=200).momenta(200) == (0.9, 0.999)


def test_a_negative_reference_length_fails_in_one_line():
    with pytest.raises(ConfigError) as info:
        parse_config({"pretrain": {"method_kwargs": {"gh": {"reference_epochs": -1}}}})
    message = str(info.value)
    assert "pretrain.method_kwargs.gh.reference_epochs=-1 is not allowed: must be >= 0" in message
    assert "\n" not in message
