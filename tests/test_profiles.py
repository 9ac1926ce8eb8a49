"""The versioned paper profiles: applied with one command, and each run end to end (`--smoke`: every stage
dvc.yaml expands from it, in one process) on tiny data written in its source's real on-disk format."""

import itertools
import json
import math
import shlex
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from duel.config import flatten
from duel.errors import ConfigError
from duel.methods import METHODS
from duel.validation import parse_config
from pipeline.profiles import smallest_n_max
from pipeline.provenance import remake_command
from tests.fake_data import write_cifar10, write_cifar100, write_image_folder, write_image_list_tree, write_stl10
from tests.project_copy import ROOT, commit_all, copy_project, run_stages, sh

PAPER_PROFILES = [
    "cifar10_dominant",
    "cifar10_exp",
    "cifar10_balance",
    "cifar100_lt",
    "stl10",
    "imagenet_lt",
    "cifar10_dominant_cpu",
    "cifar10_lt_common",
    "cifar10_lt_reference",
]
# Profiles that read SDCLR's split files: the smoke writes small ones in the same format.
SPLIT_FILES = {"cifar10_lt_common", "cifar10_lt_reference"}


def use_profile(cwd, env, *args):
    return sh([sys.executable, "-m", "pipeline", "use-profile", *args], cwd, env)


def test_every_profile_is_valid_complete_and_params_yaml_is_the_digits_profile():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    needed = {key for stage in stages.values() for key in stage.get("params", [])}
    assert "probe.heads" in needed
    for path in (ROOT / "params").glob("*.yaml"):
        values = yaml.safe_load(path.read_text())
        parse_config(values)
        # DVC reads the params a stage depends on from the file itself, not from our defaults.
        present = set(values) | set(flatten(values))
        assert needed <= present, (path.name, sorted(needed - present))
    embedded = {"digits", "digits_baselines", "digits_balance"}
    assert {p.stem for p in (ROOT / "params").glob("*.yaml")} == embedded | set(PAPER_PROFILES)
    assert (ROOT / "params.yaml").read_text() == (ROOT / "params" / "digits.yaml").read_text()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_can_join_every_profiles_sweep_with_its_defaults(method):
    for path in sorted((ROOT / "params").glob("*.yaml")):
        values = yaml.safe_load(path.read_text())
        values["sweep"]["methods"] = [m for m in values["sweep"]["methods"] if m != method] + [method]
        try:
            parse_config(values)
        except ConfigError as error:
            pytest.fail(f"{path.name} with {method}: {error}")


def test_use_profile_applies_overrides_keeps_comments_and_refuses_bad_values(tmp_path):
    env = copy_project(tmp_path)
    sets = ["runtime.data_root=/data/c10", "sweep.seeds=[4, 5]"]
    out = use_profile(tmp_path, env, "cifar10_exp", *(arg for s in sets for arg in ("--set", s)))
    assert "params.yaml <- params/cifar10_exp.yaml" in out
    text = (tmp_path / "params.yaml").read_text()
    assert "[SDCLR]" in text and text.startswith("# Written by `python -m pipeline use-profile cifar10_exp")
    command = shlex.split(remake_command(tmp_path / "params.yaml"))  # pasted into a shell, it runs as it ran
    assert command[:5] == ["python", "-m", "pipeline", "use-profile", "cifar10_exp"] and command[-3:] == [
        "&&",
        "dvc",
        "repro",
    ]
    assert command[6:-3:2] == sets
    values = yaml.safe_load(text)
    assert values["runtime"]["data_root"] == "/data/c10" and values["sweep"]["seeds"] == [4, 5]
    assert values["pretrain"]["epochs"] == 200

    before = (tmp_path / "params.yaml").read_text()
    for args, message in [
        (["nope"], "unknown profile 'nope'; known profiles: cifar100_lt"),
        (["stl10", "--set", "pretrain.batch_size=1"], "pretrain.batch_size=1 is not allowed"),
        (["stl10", "--set", "nosuch.key=1"], "'nosuch' is not a section"),
        (["stl10", "--set", "epochs"], "is not key=value"),
    ]:
        proc = __import__("subprocess").run(
            [sys.executable, "-m", "pipeline", "use-profile", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "params.yaml").read_text() == before  # nothing half-applied


def test_smoke_n_max_is_the_smallest_that_keeps_every_class():
    values = {"data": {"source": "cifar10"}, "prepare": {"profile": "exp"}, "sweep": {"imbalance": [100]}}
    assert smallest_n_max(values) == 100
    values["data"]["source"] = "cifar100"  # n 100 leaves every class an image, but cuts 5 classes of 4 images
    assert smallest_n_max(values) == 108
    assert smallest_n_max({**values, "probe": {"groups": "shots"}}) == 100
    values["data"]["source"] = "cifar10"
    values["prepare"]["profile"] = "dominant"
    values["sweep"]["imbalance"] = [0.9]
    values["probe"] = {"groups": "head"}
    assert smallest_n_max(values) == 82  # floor(82 * 0.1 / (0.9 * 9)) = 1
    values["prepare"]["profile"] = "natural"
    assert smallest_n_max(values) is None
    values = {
        "data": {"source": "imagefolder", "root": None},
        "prepare": {"profile": "exp"},
        "sweep": {"imbalance": [10]},
    }
    assert smallest_n_max(values) is None  # classes unknown until the folder is there
    with pytest.raises(ConfigError):
        parse_config({"prepare": {"profile": "file"}})  # file needs prepare.index_file


def write_sdclr_splits(folder, per_class=115, val_per_class=5):
    """SDCLR-format split files over write_cifar10's training images (image i has class i % 10): a
    validation file of `val_per_class` images per class and long-tailed split{draw}_D_i.npy files
    (20 images of class 0 down to 1 of class 9, exp r = 20)."""
    folder.mkdir(parents=True)
    by_class = [np.arange(c, 10 * per_class, 10) for c in range(10)]
    np.save(folder / "valIdxList.npy", np.concatenate([idx[:val_per_class] for idx in by_class]))
    for draw in (1, 2):
        counts = [max(1, int(20 * 0.05 ** (c / 9))) for c in range(10)]
        lt = [idx[val_per_class + draw : val_per_class + draw + n] for idx, n in zip(by_class, counts, strict=True)]
        np.save(folder / f"split{draw}_D_i.npy", np.concatenate(lt))


def write_source(profile, data):
    if profile in SPLIT_FILES:
        write_cifar10(data, per_class=115)
        write_sdclr_splits(data / "splits")
    elif profile == "cifar10_dominant_cpu":  # an image folder, like the JPEG copy of CIFAR-10
        write_image_folder(data, per_class=115)
    elif profile.startswith("cifar10_"):
        write_cifar10(data, per_class=115)
    elif profile == "cifar100_lt":  # the smoke's n_max is 108 (thirds with no cut between equal counts)
        write_cifar100(data, per_class=125)
    elif profile == "stl10":
        write_stl10(data, per_class=15)
    else:
        write_image_list_tree(data, counts=[9, 5, 3], size=40)


def smoke_setup(tmp_path, profile, *overrides):
    """A copy of the project with `profile` applied in smoke form to tiny files in its source's format."""
    root, data = tmp_path / "project", tmp_path / "data"
    root.mkdir()
    env = copy_project(root)
    write_source(profile, data)
    # torchvision checks each file's md5 against the official archives; the tiny files here only have the format.
    own_copy = ("--set", "runtime.verify_checksums=false", *overrides)
    if profile in SPLIT_FILES:
        splits = data / "splits"
        own_copy += ("--set", f"prepare.index_file={splits}/split{{draw}}_D_i.npy")
        own_copy += ("--set", f"prepare.val_index_file={splits}/valIdxList.npy")
    use_profile(root, env, profile, "--smoke", "--set", f"runtime.data_root={data}", *own_copy)
    commit_all(root, env, f"{profile} smoke")
    return root, env


@pytest.mark.slow
@pytest.mark.parametrize("profile", [p for p in PAPER_PROFILES if p != "cifar10_lt_reference"])  # below: all methods
def test_paper_profile_smoke_runs_every_stage(tmp_path, profile):
    root, env = smoke_setup(tmp_path, profile)
    run_stages(root, env)

    sweep = yaml.safe_load((root / "params.yaml").read_text())["sweep"]
    setting = f"{sweep['imbalance'][0]:g}"
    assert len(sweep["methods"]) * len(sweep["train_sets"]) == 2
    for method, train_set in itertools.product(sweep["methods"], sweep["train_sets"]):
        run = f"{method}-imb{setting}-{train_set}-d{sweep['draws'][0]}-s0"
        pre = json.loads((root / f"outputs/pretrain/{run}/metrics.json").read_text())
        probe = json.loads((root / f"outputs/probe/{run}/metrics.json").read_text())
        assert 1 <= pre["steps"] <= 2
        if METHODS[method].memory_policy is not None:
            assert 0 <= pre["memory_entropy"] <= 1
        assert 0 <= probe["linear_top1"] <= 1 and "linear_top1_split_std" in probe  # two k-shot splits
    table = pd.read_csv(root / "reports/linear_top1.csv", index_col="method")
    rows = [m if t == "lt" else f"{m} ({t})" for m in sweep["methods"] for t in sweep["train_sets"]]
    assert list(table.index) == rows and list(table.columns) == [setting]


@pytest.mark.slow
def test_digits_baselines_profile_runs_the_lt_methods_and_the_lt_heads(tmp_path):
    """The embedded long-tailed baselines study, every stage, shortened to 2 epochs and to the three
    long-tailed methods (moco and dmoco run in the e2e study, simclr in the balance one; every method's loss
    is unit-tested)."""
    env = copy_project(tmp_path)
    methods = ["sdclr", "bcl", "gh"]
    short = [f"sweep.methods=[{', '.join(methods)}]", "pretrain.epochs=2", "probe.head_epochs=20"]
    use_profile(tmp_path, env, "digits_baselines", *(arg for s in short for arg in ("--set", s)))
    commit_all(tmp_path, env, "baselines")
    run_stages(tmp_path, env)
    table = pd.read_csv(tmp_path / "reports/linear_top1.csv", index_col="method")
    assert list(table.index) == methods and table.notna().all().all()
    heads = pd.read_csv(tmp_path / "reports/lt_heads.csv", index_col="method / head")
    assert list(heads.columns) == ["many", "medium", "few", "all"]
    assert len(heads) == len(methods) * 13 and (heads != "-").all().all()  # probe, six heads, six adjusted
    for method in methods:
        probe = json.loads((tmp_path / f"outputs/probe/{method}-imb100-lt-d0-s0/metrics.json").read_text())
        assert 0.1 < probe["head_logit_adjusted_top1"] <= 1 and probe["head_cb_hp"] in (0.9, 0.99, 0.999, 0.9999)
        assert probe["head_ce_posthoc_tau"] in (0.0, 0.5, 1.0, 1.5) and 0.1 < probe["head_ce_posthoc_top1"] <= 1
    pre = json.loads((tmp_path / "outputs/pretrain/sdclr-imb100-lt-d0-s0/metrics.json").read_text())
    assert pre["steps"] >= 2 and math.isfinite(pre["final_loss"])


@pytest.mark.slow
def test_digits_balance_profile_builds_the_balanced_vs_lt_table(tmp_path):
    """The D_b vs D_i study, every stage, shortened to one method, two LT draws and 3 epochs."""
    env = copy_project(tmp_path)
    short = ["sweep.methods=[simclr]", "sweep.draws=[0, 1]", "pretrain.epochs=3"]
    use_profile(tmp_path, env, "digits_balance", *(arg for s in short for arg in ("--set", s)))
    commit_all(tmp_path, env, "balance")
    run_stages(tmp_path, env)

    table = pd.read_csv(tmp_path / "reports/balanced_vs_lt.csv", index_col="method / pretraining set / probe")
    sets = {"balanced": "D_b (balanced)", "lt": "D_i (long-tailed)"}
    assert list(table.index) == [f"simclr / {sets[t]} / {p}" for p in ("linear", "kNN") for t in sets]
    assert list(table.columns) == ["many", "medium", "few", "all"]
    for train_set, name in sets.items():
        runs = [f"simclr-imb100-{train_set}-d{draw}-s0" for draw in (0, 1)]
        probes = [json.loads((tmp_path / f"outputs/probe/{r}/metrics.json").read_text()) for r in runs]
        for (probe, key), (group, column) in itertools.product(
            (("linear", "linear"), ("kNN", "knn")), (("few", "few"), ("top1", "all"))
        ):
            values = pd.Series([100 * p[f"{key}_{group}"] for p in probes])
            cell = table.loc[f"simclr / {name} / {probe}", column]
            assert cell == f"{values.mean():.1f} ± {values.std():.1f}"  # over the draws
        steps = {json.loads((tmp_path / f"outputs/pretrain/{r}/metrics.json").read_text())["steps"] for r in runs}
        assert steps == {9}  # 242 images (D_i, or D_b of the same size): 3 full batches of 64, 3 epochs
    manifests = [json.loads((tmp_path / f"outputs/prepare/imb100-d{d}/manifest.json").read_text()) for d in (0, 1)]
    assert manifests[0]["class_order"] != manifests[1]["class_order"]  # shuffled head class per draw
    assert "Pretrained on a balanced set (D_b) or the LT set (D_i)" in (tmp_path / "reports/results.md").read_text()


@pytest.mark.slow
def test_reference_profile_runs_every_method_under_its_own_recipe(tmp_path):
    """cifar10_lt_reference, every method for two epochs (a warm-up, then the cosine) on SDCLR-format split
    files: each run trains and records the recipe of its own reference."""
    profile = yaml.safe_load((ROOT / "params" / "cifar10_lt_reference.yaml").read_text())
    methods = profile["sweep"]["methods"]
    root, env = smoke_setup(tmp_path, "cifar10_lt_reference", "--set", f"sweep.methods=[{','.join(methods)}]")
    run_stages(root, env)
    recipes = profile["pretrain"]["recipes"]
    expected = {  # written out from the references (docs/fidelity.md)
        "simclr": (0.5, 1e-4, 0.2, "mlp_bn", 1),
        "simclr_ts": (0.5, 1e-4, 0.2, "mlp_bn", 1),  # its loss follows its own schedule (method/temperature)
        "sdclr": (0.5, 1e-4, 0.2, "mlp3_bn", 1),
        "bcl": (0.5, 5e-4, 0.2, "mlp_bn", 1),
        "gh": (0.5, 5e-4, 0.2, "mlp_bn", 1),
        "moco": (0.06, 5e-4, 0.1, "linear", 0),
        "dmoco": (0.06, 5e-4, 0.1, "linear", 0),
    }
    assert set(recipes) | {"simclr", "simclr_ts"} == set(expected) == set(methods)
    for method in methods:
        run = f"{method}-imb100-lt-d1-s0"
        config = torch.load(root / f"outputs/pretrain/{run}/model.pt", weights_only=False)["config"]["pretrain"]
        got = (config["lr"], config["weight_decay"], config["temperature"], config["head"], config["warmup_epochs"])
        assert got == expected[method], method
        assert config["recipes"] == {}  # a run records the values it trained with
        log = pd.read_csv(root / f"outputs/pretrain/{run}/train_log.csv")
        assert log["loss"].notna().all() and len(log) >= 1
        if expected[method][4]:  # the warm-up: the first update at lr / warm-up steps, not 0
            assert 0 < log["lr"].iloc[0] < expected[method][0]
    memories = {
        m: torch.load(root / f"outputs/pretrain/{m}-imb100-lt-d1-s0/memory.pt")["state_dict"] for m in ("moco", "dmoco")
    }
    # moco: a full random queue at the start, two asymmetric pushes of 8 keys (one view's) into K 32.
    assert int(memories["moco"]["filled"]) == 32 and int((memories["moco"]["labels"] >= 0).sum()) == 16
    # dmoco: an empty memory at the start (a DUEL memory would keep random keys), the same two pushes.
    assert int(memories["dmoco"]["filled"]) == 16
