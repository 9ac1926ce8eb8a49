from dataclasses import replace

import pytest
import torch

from duel.losses import info_nce, nt_xent
from duel.methods import METHODS, build_method


@pytest.mark.parametrize("name", list(METHODS))
def test_one_training_step(name, tiny_config):
    torch.manual_seed(0)
    method = build_method(name, 1, tiny_config.pretrain)
    x1, x2 = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    labels, indices = torch.arange(8) % 3, torch.arange(8)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # the second step sees a non-empty memory
        loss = method.training_loss(x1, x2, labels, indices)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters(), strict=True))
    assert method(x1).shape == (8, method.feature_dim)
    if method.memory is None:
        assert name == "simclr"
    else:
        assert method.memory.num_filled == 32  # 2 steps x 2 views x 8 keys
        assert method.memory.policy == {"moco": "fifo", "rmoco": "random"}.get(name, "duel")
        assert set(method.memory.indices.tolist()) == set(range(8))


def test_policy_override_for_the_random_ablation(tiny_config):
    cfg = tiny_config.pretrain
    ablation = replace(cfg, memory=replace(cfg.memory, policy="random"))
    assert build_method("dmoco", 1, ablation).memory.policy == "random"


def test_moco_key_encoder_follows_by_momentum(tiny_config):
    method = build_method("moco", 1, tiny_config.pretrain)
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    key_before = [p.clone() for p in method.key_backbone.parameters()]
    method.momentum_update()
    m = tiny_config.pretrain.key_momentum
    for k0, k1, q in zip(key_before, method.key_backbone.parameters(), method.backbone.parameters(), strict=True):
        torch.testing.assert_close(k1, m * k0 + (1 - m) * q)
    assert not any(p.requires_grad for p in method.key_backbone.parameters())


def test_info_nce_hand_example():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = -torch.log(
        torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1 + torch.exp(torch.tensor(-2.0)))
    )
    torch.testing.assert_close(info_nce(q, k, negatives, 0.5), expected)
    assert info_nce(q, k, negatives[:0], 0.5) == 0  # an empty memory: only the positive


def test_nt_xent_ignores_self_similarity_and_uses_extra_negatives():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = z1.clone()
    # Row 0: positive (row 2) sim 1, negatives rows 1 and 3 sim 0.
    expected = -torch.log(torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 2))
    torch.testing.assert_close(nt_xent(z1, z2, 1.0), expected)
    assert nt_xent(z1, z2, 1.0, extra_negatives=torch.tensor([[1.0, 0.0]])) > expected


def test_backbones_give_their_feature_dimension():
    from duel.backbones import build_backbone

    net, dim = build_backbone("resnet18_cifar", 3)
    assert dim == 512 and net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)  # CIFAR stem, no max-pool
    net, dim = build_backbone("small_cnn", 1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, dim)
