import pytest

from duel.config import StudyConfig
from duel.errors import ConfigError
from duel.validation import parse_config


def test_empty_params_give_the_documented_defaults():
    assert parse_config({}) == StudyConfig()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sweep": {"methods": ["byol"]}}, "sweep.methods='byol' is not allowed: known methods: moco, dmoco"),
        ({"data": {"source": "mnist"}}, "data.source='mnist' is not allowed: known sources: digits"),
        ({"sweep": {"imbalance": [10, 0.5]}}, "sweep.imbalance=0.5 is not allowed: the imbalance ratio r"),
        ({"prepare": {"profile": "dominant"}, "sweep": {"imbalance": [1.5]}}, "rho_max of the dominant profile"),
        ({"prepare": {"profile": "dominant"}, "sweep": {"imbalance": [0]}}, "sweep.imbalance=0.0"),
        ({"pretrain": {"memory": {"size": 32}}}, "pretrain.memory.size=32 is not allowed: the memory must hold"),
        ({"pretrain": {"epochs": 0}}, "pretrain.epochs=0 is not allowed: must be > 0"),
        ({"pretrain": {"epochs": "ten"}}, "pretrain.epochs='ten' is not allowed: expected int"),
        ({"pretrain": {"lr_typo": 1}}, "pretrain.lr_typo=1 is not allowed: unknown key; allowed: backbone"),
        ({"probe": {"train_set": "test"}}, "probe.train_set='test' is not allowed: balanced, lt or kshot"),
        ({"probe": {"heads": ["svm"]}}, "probe.heads='svm' is not allowed: known heads: ce, focal"),
        ({"probe": {"posthoc_taus": [-1.0]}}, "probe.posthoc_taus=[-1.0] is not allowed"),
        ({"runtime": {"precision": "fp16"}}, "runtime.precision='fp16' is not allowed: fp32 or bf16"),
        ({"pretrain": {"augment": {"cropping_mode": "crop"}}}, "pretrain.augment.cropping_mode='crop' is not allowed"),
        ({"runtime": {"cuda_graphs": True}}, "runtime.cuda_graphs=True is not allowed: CUDA graphs need"),
        ({"data": {"source": "cifar10"}}, "runtime.data_root=None is not allowed: source cifar10 needs a folder"),
        ({"pretrain": {"method_kwargs": {"byol": {}}}}, "pretrain.method_kwargs='byol' is not allowed: known methods"),
        ({"sweep": {"train_sets": ["test"]}}, "sweep.train_sets='test' is not allowed: lt (the LT subset) or balanced"),
        ({"sweep": {"draws": [0, -1]}}, "sweep.draws=-1 is not allowed: LT draws are numbered from 0"),
        ({"sweep": {"draws": [1, 1]}}, "sweep.draws=[1, 1] is not allowed: distinct values"),
        ({"sweep": {"train_sets": []}}, "every axis needs a value"),
        ({"pretrain": {"online_eval": {"every": -1}}}, "pretrain.online_eval.every=-1 is not allowed: must be >= 0"),
        ({"pretrain": {"online_eval": {"bank_size": 0}}}, "pretrain.online_eval.bank_size=0 is not allowed"),
        ({"pretrain": {"recipes": {"moco": {"online_eval": {"every": 2}}}}}, "pretrain.recipes.moco.online_eval"),
    ],
)
def test_bad_params_name_key_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as info:
        parse_config(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats_but_bools_are_not_ints():
    assert parse_config({"pretrain": {"lr": 1}}).pretrain.lr == 1.0
    with pytest.raises(ConfigError, match="expected int"):
        parse_config({"pretrain": {"epochs": True}})
