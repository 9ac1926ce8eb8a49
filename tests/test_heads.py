import math

import numpy as np
import pytest
import torch

from duel.eval.heads import (
    HEAD_LOSSES,
    cb_loss,
    ce_loss,
    class_balanced_weights,
    focal_loss,
    head_logits,
    ldam_loss,
    ldam_margins,
    log_prior,
    logit_adjusted_loss,
    lt_head_probe,
    posthoc_adjust,
    train_head,
)

LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]]
TARGETS = [0, 2]


def hand_ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def hand_p(row: list[float], target: int) -> float:
    return math.exp(row[target]) / sum(math.exp(v) for v in row)


def as_tensors(logits: list[list[float]], targets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(logits), torch.tensor(targets)


def test_ce_and_focal_match_their_formulas():
    z, y = as_tensors(LOGITS, TARGETS)
    ce = (hand_ce(LOGITS[0], 0) + hand_ce(LOGITS[1], 2)) / 2
    assert ce_loss(z, y).item() == pytest.approx(ce, rel=1e-6)
    assert focal_loss(z, y, 0.0).item() == pytest.approx(ce, rel=1e-6)
    focal = [(1 - hand_p(row, t)) ** 2 * math.log(hand_p(row, t)) for row, t in zip(LOGITS, TARGETS, strict=True)]
    assert focal_loss(z, y, 2.0).item() == pytest.approx(-sum(focal) / 2, rel=1e-6)
    assert focal_loss(z, y, 2.0).item() < ce  # the well-classified first sample is down-weighted


def test_class_balanced_weights_are_inverse_effective_numbers_summing_to_c():
    raw = [(1 - 0.99) / (1 - 0.99**n) for n in (100, 10, 1)]
    expected = [3 * w / sum(raw) for w in raw]  # ~ [0.0422, 0.2800, 2.6777]
    w = class_balanced_weights([100, 10, 1], 0.99)
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    assert w.sum().item() == pytest.approx(3.0)
    assert expected[2] == pytest.approx(2.6777, abs=1e-4)
    assert class_balanced_weights([100, 10, 1], 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights([5, 1], 1.0)


def test_cb_loss_is_weighted_ce_normalised_by_the_batch_weights():
    z, y = as_tensors(LOGITS, TARGETS)
    expected = (1.0 * hand_ce(LOGITS[0], 0) + 3.0 * hand_ce(LOGITS[1], 2)) / (1.0 + 3.0)
    assert cb_loss(z, y, torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(expected, rel=1e-6)


def test_ldam_margins_scale_as_inverse_fourth_root():
    assert ldam_margins([16, 1], 0.5).tolist() == pytest.approx([0.25, 0.5])
    assert ldam_margins([81, 1, 16], 0.3).tolist() == pytest.approx([0.1, 0.3, 0.15])


def test_ldam_loss_hand_example():
    cosines = [[0.8, 0.1], [0.3, 0.6]]
    z, y = as_tensors(cosines, [0, 1])
    margins = torch.tensor([0.25, 0.5])
    # scale 10 times the cosines with the true class's margin taken off: [5.5, 1.0] and [3.0, 1.0]
    ce0, ce1 = hand_ce([5.5, 1.0], 0), hand_ce([3.0, 1.0], 1)
    assert ldam_loss(z, y, margins, scale=10.0).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    weighted = ldam_loss(z, y, margins, scale=10.0, weights=torch.tensor([1.0, 3.0])).item()
    assert weighted == pytest.approx((ce0 + 3 * ce1) / 4, rel=1e-6)


def test_logit_adjusted_loss_is_ce_on_prior_shifted_logits():
    z, y = as_tensors(LOGITS, TARGETS)
    prior = [0.6, 0.3, 0.1]  # counts [6, 3, 1]
    assert log_prior([6, 3, 1]).tolist() == pytest.approx([math.log(p) for p in prior], rel=1e-6)
    shifted = [[v + 1.5 * math.log(p) for v, p in zip(row, prior, strict=True)] for row in LOGITS]
    expected = (hand_ce(shifted[0], 0) + hand_ce(shifted[1], 2)) / 2
    assert logit_adjusted_loss(z, y, log_prior([6, 3, 1]), 1.5).item() == pytest.approx(expected, rel=1e-6)


def test_posthoc_adjust_moves_predictions_toward_the_tail():
    logits = torch.tensor([[1.0, 0.8]])
    prior = log_prior([90, 10])
    adjusted = posthoc_adjust(logits, prior, 1.0)
    assert adjusted[0].tolist() == pytest.approx([1.0 - math.log(0.9), 0.8 - math.log(0.1)], rel=1e-6)
    assert logits.argmax(1).item() == 0 and adjusted.argmax(1).item() == 1
    assert torch.equal(posthoc_adjust(logits, prior, 0.0), logits)


def blobs(rng: np.random.Generator, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance Gaussians in 8 dimensions centred 1.5 along the first three axes: they overlap."""
    y = np.repeat(np.arange(len(counts)), counts)
    return (1.5 * np.eye(len(counts), 8)[y] + rng.normal(size=(len(y), 8))).astype(np.float32), y


@pytest.fixture(scope="module")
def long_tailed():
    rng = np.random.default_rng(0)
    counts = [300, 30, 6]
    return counts, blobs(rng, counts), blobs(rng, [30, 30, 30]), blobs(rng, [200, 200, 200])


def recalls(predictions: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float((predictions[labels == c] == c).mean()) for c in range(labels.max() + 1)]


def test_long_tailed_heads_recover_the_rare_class(long_tailed):
    counts, train, val, (test_x, test_y) = long_tailed
    results = {loss: lt_head_probe(train, val, test_x, counts, loss) for loss in HEAD_LOSSES}
    results["ldam_drw"] = lt_head_probe(train, val, test_x, counts, "ldam", drw_start=0.5)
    few = {name: recalls(r.test_predictions, test_y)[2] for name, r in results.items()}
    for name, r in results.items():
        assert (r.test_predictions == test_y).mean() > 1 / 3 + 0.1, name  # better than chance
        assert r.posthoc_tau == 0.0 and r.best_hp in r.val_accuracy
    assert few["ce"] < 0.1  # six training images: plain CE almost never predicts the rare class
    assert few["logit_adjusted"] > few["ce"] + 0.4
    assert few["cb"] > few["ce"] + 0.3
    assert few["ldam_drw"] > few["ldam"]  # the deferred re-weighting moves the boundary toward the tail
    assert list(results["cb"].val_accuracy) == [0.9, 0.99, 0.999, 0.9999]
    best = results["logit_adjusted"]
    assert best.best_hp == max(best.val_accuracy, key=best.val_accuracy.get)


def test_posthoc_tau_is_chosen_on_validation(long_tailed):
    counts, train, val, (test_x, test_y) = long_tailed
    plain = lt_head_probe(train, val, test_x, counts, "ce")
    adjusted = lt_head_probe(train, val, test_x, counts, "ce", posthoc_taus=[0.0, 0.5, 1.0, 1.5])
    assert adjusted.posthoc_tau > 0
    assert adjusted.posthoc_val_accuracy[adjusted.posthoc_tau] > adjusted.posthoc_val_accuracy[0.0]
    assert adjusted.posthoc_val_accuracy[0.0] == plain.val_accuracy[0.0]
    assert recalls(adjusted.posthoc_test_predictions, test_y)[2] > recalls(plain.test_predictions, test_y)[2] + 0.4
    np.testing.assert_array_equal(adjusted.test_predictions, plain.test_predictions)  # the head as trained
    np.testing.assert_array_equal(plain.posthoc_test_predictions, plain.test_predictions)  # tau 0: unchanged


def test_heads_store_standardisation_are_seeded_and_ldam_is_cosine(long_tailed):
    counts, (x, y), _, (test_x, _) = long_tailed
    head = train_head(x, y, counts, "ce", 0.0, epochs=5, seed=3)
    assert head.mean.tolist() == pytest.approx(x.mean(0).tolist(), abs=1e-5)
    again = train_head(x, y, counts, "ce", 0.0, epochs=5, seed=3)
    assert torch.equal(head_logits(head, test_x), head_logits(again, test_x))
    ldam = train_head(x, y, counts, "ldam", 0.5, epochs=5)
    cosines = ldam(torch.as_tensor(test_x))
    assert cosines.abs().max() <= 1 + 1e-6 and ldam.fc.bias is None
    assert torch.allclose(head_logits(ldam, test_x), 30.0 * cosines)


def test_bad_arguments_raise(long_tailed):
    counts, train, val, (test_x, _) = long_tailed
    with pytest.raises(ValueError, match="unknown head loss 'mse'"):
        lt_head_probe(train, val, test_x, counts, "mse")
    with pytest.raises(ValueError, match="unknown head loss"):
        train_head(*train, counts, "hinge", 0.0)
    with pytest.raises(ValueError, match="per-class counts"):
        train_head(*train, [300, 30, 5], "ce", 0.0)
    with pytest.raises(ValueError, match="drw_start"):
        train_head(*train, counts, "cb", 0.99, drw_start=0.5)
