from dataclasses import replace

import pytest
import torch

from duel.backbones import SplitBatchNorm2d
from duel.config import RuntimeConfig
from duel.data.augment import ssl_augmentation, to_unit
from duel.data.datasets import Batch
from duel.errors import ConfigError
from duel.losses import info_nce, nt_xent
from duel.methods import METHODS, DataInfo, build_method
from duel.train import training_step
from duel.validation import parse_config


def tiny_batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    return Batch(images, torch.arange(n) % 3, torch.arange(100, 100 + n), torch.arange(n))


def tiny_method(name: str, cfg, num_samples: int = 8):
    return build_method(name, cfg.pretrain, DataInfo(channels=1, num_samples=num_samples, num_classes=3))


@pytest.mark.parametrize("name", list(METHODS))
def test_one_training_step(name, tiny_config):
    torch.manual_seed(0)
    method = tiny_method(name, tiny_config)
    augment = ssl_augmentation(tiny_config.pretrain.augment, 8, 1, [0.5], [0.25])
    batch = tiny_batch()
    before = [p.detach().clone() for p in method.backbone.parameters()]
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1)
    for step in range(2):  # the second step sees a non-empty memory
        method.on_epoch_start(step, 2)
        loss = training_step(method, augment, optimizer, batch, RuntimeConfig(), (step, 2))
    assert torch.isfinite(loss) and loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters(), strict=True))
    assert method(to_unit(batch.images)).shape == (8, method.feature_dim)
    if method.memory is None:
        assert method.memory_policy is None
    else:
        assert method.memory.num_filled == 32  # 2 steps x 2 views x 8 keys
        policies = {"moco": "fifo", "moco_ts": "fifo", "rmoco": "random", "rsimclr": "random"}
        assert method.memory.policy == policies.get(name, "duel")
        assert set(method.memory.indices.tolist()) == set(range(100, 108))


def test_losses_are_free_of_side_effects_and_after_step_pushes(tiny_config):
    """training_loss only computes; the memory push and the key-encoder update happen in after_step."""
    method = tiny_method("moco", tiny_config)
    batch = tiny_batch()._replace(images=torch.rand(8, 1, 8, 8))
    keys_before = [p.clone() for p in method.key_backbone.parameters()]
    output = method.training_loss([batch.images, batch.images.flip(-1)], batch)
    assert method.memory.num_filled == 0
    assert output.per_sample.shape == (8,) and not output.per_sample.requires_grad
    torch.testing.assert_close(output.per_sample.mean(), output.loss.detach())
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    method.after_step(output, batch, 0, 1)
    assert method.memory.num_filled == 16
    assert all(not torch.equal(a, b) for a, b in zip(keys_before, method.key_backbone.parameters(), strict=True))


def test_memory_variants_are_registered_methods_not_config_strings(tiny_config):
    policies = {name: cls.memory_policy for name, cls in METHODS.items()}
    assert policies["rmoco"] == policies["rsimclr"] == "random"
    assert policies["dmoco"] == policies["dsimclr"] == "duel"
    with pytest.raises(ConfigError, match=r"pretrain\.memory\.policy='random' is not allowed: unknown key"):
        parse_config({"pretrain": {"memory": {"policy": "random"}}})


def test_moco_key_encoder_follows_by_momentum(tiny_config):
    method = tiny_method("moco", tiny_config)
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


def test_split_batchnorm_with_one_split_is_plain_batchnorm():
    x = torch.randn(12, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    plain, split = torch.nn.BatchNorm2d(3), SplitBatchNorm2d(3, 1)
    torch.testing.assert_close(split(x), plain(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(split, name), getattr(plain, name))


def test_split_batchnorm_normalises_each_interleaved_sub_batch_by_its_own_statistics():
    g = torch.Generator().manual_seed(0)
    splits, x = 3, torch.randn(12, 2, 4, 4, generator=g) + torch.arange(12.0).view(12, 1, 1, 1)
    bn = SplitBatchNorm2d(2, splits)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.5]))
        bn.bias.copy_(torch.tensor([1.0, -1.0]))
    out = bn(x)
    means, unbiased = [], []
    for k in range(splits):  # sub-batch k: images k, k + 3, k + 6, k + 9
        part = x[k::splits]
        mean, var = part.mean((0, 2, 3)), part.var((0, 2, 3), unbiased=False)
        expected = (part - mean.view(1, 2, 1, 1)) / (var.view(1, 2, 1, 1) + bn.eps).sqrt()
        torch.testing.assert_close(out[k::splits], expected * bn.weight.view(1, 2, 1, 1) + bn.bias.view(1, 2, 1, 1))
        means.append(mean)
        unbiased.append(part.var((0, 2, 3), unbiased=True))
    # Running statistics: momentum 0.1 towards the mean of the sub-batches' statistics.
    torch.testing.assert_close(bn.running_mean, 0.1 * torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * torch.stack(unbiased).mean(0))
    bn.eval()  # evaluation: the running statistics, like plain BatchNorm
    plain = torch.nn.BatchNorm2d(2).eval()
    plain.load_state_dict(bn.state_dict())
    torch.testing.assert_close(bn(x), plain(x))


def test_moco_with_shuffle_bn_keeps_plain_state_dict_keys_and_shuffles_only_the_key_batch(tiny_config):
    pretrain = replace(tiny_config.pretrain, method_kwargs={"moco": {"bn_splits": 4}})
    plain = tiny_method("moco", tiny_config)
    split = build_method("moco", pretrain, DataInfo(channels=1, num_samples=8, num_classes=3))
    assert split.state_dict().keys() == plain.state_dict().keys()  # probes load it into plain BatchNorm
    assert sum(isinstance(m, SplitBatchNorm2d) for m in split.modules()) == 6  # 3 per encoder
    images = to_unit(tiny_batch().images)
    split.train()
    torch.manual_seed(0)
    keys = split.keys(images)
    torch.manual_seed(0)
    order = torch.randperm(8)
    # The keys come back in the batch's order, computed on the shuffled batch's sub-batch statistics.
    expected = torch.nn.functional.normalize(split.key_projector(split.key_backbone(images[order])), dim=1)
    torch.testing.assert_close(keys, expected[order.argsort()])
    unshuffled = torch.nn.functional.normalize(split.key_projector(split.key_backbone(images)), dim=1)
    assert not torch.allclose(keys, unshuffled)  # other sub-batches, other statistics
    bad = {"batch_size": 8, "memory": {"size": 32}, "method_kwargs": {"dmoco": {"bn_splits": 3}}}
    with pytest.raises(ConfigError, match=r"bn_splits=3 is not allowed: must be >= 1 and divide"):
        parse_config({"pretrain": bad})
    # Data-parallel: groups of the global batch, the same number on every process.
    parallel = {"batch_size": 8, "memory": {"size": 32}, "nproc_per_node": 2}
    for splits in (2, 4, 16):
        parse_config({"pretrain": {**parallel, "method_kwargs": {"dmoco": {"bn_splits": splits}}}})
    for splits in (3, 32):
        with pytest.raises(ConfigError, match=rf"bn_splits={splits} is not allowed: must be 1 or a multiple of the 2"):
            parse_config({"pretrain": {**parallel, "method_kwargs": {"dmoco": {"bn_splits": splits}}}})
    synced = {**parallel, "sync_batchnorm": True, "method_kwargs": {"dmoco": {"bn_splits": 2}}}
    with pytest.raises(ConfigError, match=r"bn_splits=2 is not allowed: 1 with pretrain.sync_batchnorm: true"):
        parse_config({"pretrain": synced, "runtime": {"device": "cuda"}})
