"""`dvc repro` of a tiny study in a temporary git copy of the project: tables, MLflow runs, reruns, notebook."""

import json
import re
import subprocess
import sys

import mlflow
import nbclient
import nbformat
import pandas as pd
import pytest
import yaml

from tests.project_copy import commit_all, copy_project, dvc, sh

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e_study")]  # one study, tests in order

TINY = {
    "sweep": {"methods": ["moco", "dmoco"], "imbalance": [10], "seeds": [0]},  # r=1 is added by a later test
    "tracking": {"experiment": "e2e"},
    "prepare": {"n_max": 30},
    "pretrain": {"epochs": 2, "batch_size": 16, "memory": {"size": 64}, "checkpoint_every": 1},
    "probe": {"knn_k": 20, "c_grid": [0.1, 1.0]},
    "report": {"tsne_perplexity": 5.0},
    "runtime": {"threads": 1},  # a test worker's share of the cores (portable, as the default study)
}


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def percent_above_chance(table: pd.DataFrame) -> bool:
    values = table.astype(float)
    return bool(((values > 10) & (values <= 100)).all().all())


@pytest.fixture(scope="session")  # xdist runs the group on one worker, but between other modules' tests
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    env = copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        for key, value in values.items():
            params[section][key] = {**params[section][key], **value} if isinstance(value, dict) else value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    commit_all(root, env, "tiny study")
    output = dvc(root, env, "repro")
    return root, env, output


def test_repro_builds_the_paper_tables(study):
    root, _, output = study
    assert ran_stages(output) == {
        "prepare@10-0",
        "report",
        *(f"{s}@{m}-10-lt-0-0" for s in ("pretrain", "probe") for m in ("moco", "dmoco")),
    }
    table = pd.read_csv(root / "reports/linear_top1.csv", index_col="method")
    assert list(table.index) == ["moco", "dmoco"] and list(table.columns) == ["10"]
    assert percent_above_chance(table)
    results = (root / "reports/results.md").read_text()
    for caption in ("Linear-probe top-1", "kNN top-1", "few group", "class entropy of the final memory"):
        assert caption in results
    assert "| dmoco | " in results and "| method | r=10 |" in results
    summary = json.loads((root / "reports/summary.json").read_text())
    assert 0 < summary["dmoco/r10/memory_entropy"] <= 1
    for name in ("accuracy_vs_imbalance", "memory_entropy", "memory_histogram", "tsne_features", "tsne_memory"):
        assert (root / f"reports/figures/{name}.png").stat().st_size > 5000, name
    assert not list(root.glob("checkpoints/*")), "finished runs leave no crash-recovery checkpoint"
    # Accuracy over training (pretrain.online_eval, on in the default params): each epoch's last step.
    online = pd.read_csv(root / "outputs/pretrain/dmoco-imb10-lt-d0-s0/online_eval.csv")
    steps = json.loads((root / "outputs/pretrain/dmoco-imb10-lt-d0-s0/metrics.json").read_text())["steps"]
    assert online["epoch"].tolist() == [0, 1] and online["step"].iloc[-1] == steps - 1
    assert {"knn_top1", "knn_many", "knn_few"} <= set(online.columns) and online["knn_top1"].between(0, 1).all()
    metrics = json.loads((root / "outputs/pretrain/dmoco-imb10-lt-d0-s0/metrics.json").read_text())
    assert metrics["online_knn_final"] == online["knn_top1"].iloc[-1]
    assert metrics["online_knn_drop"] == pytest.approx(online["knn_top1"].max() - online["knn_top1"].iloc[-1])
    curves = pd.read_csv(root / "reports/accuracy_over_training.csv")
    assert set(curves["row"]) == {"moco", "dmoco"} and (curves["knn_top1_count"] == 1).all()
    assert (root / "reports/figures/accuracy_over_training.png").stat().st_size > 5000
    assert "Degradation during training" in results


def test_every_stage_instance_is_one_mlflow_run_with_its_metrics(study):
    root, _, _ = study
    assert (root / "mlflow.db").exists(), "default store: mlflow.db at the project root"
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(runs) == len(by_name) == 6
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["stage"] for r in runs} == {"prepare", "pretrain", "probe", "report"}
    assert all(len(r.data.tags["params_hash"]) == 12 for r in runs)
    assert all(r.info.artifact_uri.startswith((root / "mlartifacts").as_uri()) for r in runs)

    probe = by_name["probe@dmoco-10-lt-0-0"]
    written = json.loads((root / "outputs/probe/dmoco-imb10-lt-d0-s0/metrics.json").read_text())
    assert probe.data.metrics == pytest.approx(written)  # the DVC metrics file is the MLflow dict
    assert probe.data.params["method"] == "dmoco" and probe.data.params["probe.knn_k"] == "20"
    # Each run spans its stage's work, not only the logging at its end.
    for run, seconds in ((probe, "probe_seconds"), (by_name["pretrain@dmoco-10-lt-0-0"], "train_seconds")):
        assert run.info.end_time - run.info.start_time >= 1000 * run.data.metrics[seconds], run.info.run_name

    pretrain = by_name["pretrain@dmoco-10-lt-0-0"]
    steps = int(pretrain.data.metrics["steps"])
    for key in ("loss", "lr", "memory_entropy", "images_per_s"):
        history = client.get_metric_history(pretrain.info.run_id, f"train/{key}")
        assert sorted(m.step for m in history) == list(range(steps)), key
    online = pd.read_csv(root / "outputs/pretrain/dmoco-imb10-lt-d0-s0/online_eval.csv")
    logged = sorted(client.get_metric_history(pretrain.info.run_id, "online/knn_top1"), key=lambda m: m.step)
    assert [m.step for m in logged] == online["step"].tolist()
    assert [m.value for m in logged] == pytest.approx(online["knn_top1"].tolist())
    curve = sorted(client.get_metric_history(pretrain.info.run_id, "train/memory_entropy"), key=lambda m: m.step)
    assert curve[-1].value == pytest.approx(pretrain.data.metrics["memory_entropy"])
    assert pretrain.data.params["pretrain.memory.size"] == "64"
    (training,) = client.get_run(pretrain.info.run_id).inputs.dataset_inputs  # the runs table's Datasets column
    manifest = json.loads((root / "outputs/prepare/imb10-d0/manifest.json").read_text())
    assert training.dataset.name == "digits-imb10-lt-d0"
    assert json.loads(training.dataset.profile)["features_size"] == manifest["num_train"]
    assert client.get_experiment_by_name("e2e").tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = {a.path for a in client.list_artifacts(pretrain.info.run_id)}
    assert {"config.json", "metrics.json", "train_log.csv", "online_eval.csv"} <= artifacts
    figures = {a.path for a in client.list_artifacts(by_name["report"].info.run_id, "figures")}
    assert "figures/tsne_memory.png" in figures


def test_dvc_metrics_and_plots_are_declared(study):
    root, env, _ = study
    metrics = json.loads(dvc(root, env, "metrics", "show", "--json"))
    files = next(iter(metrics.values()))["data"]
    assert "reports/summary.json" in files and "outputs/probe/moco-imb10-lt-d0-s0/metrics.json" in files
    dvc(root, env, "plots", "show", "--out", "dvc_plots")
    html = (root / "dvc_plots/index.html").read_text()
    assert "memory_entropy" in html and "tsne_memory" in html
    assert "online_eval.csv" in html and "accuracy_over_training" in html


def test_outputs_pushed_to_a_remote_rebuild_nothing_in_another_clone(study, tmp_path):
    """A DVC remote (a local folder here; S3, GCS and SSH are configured the same way, README)."""
    root, env, _ = study
    dvc(root, env, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    sh(["git", "add", "-A"], root, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results"], root, env)
    dvc(root, env, "push")
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    env = {**env, "PYTHONPATH": str(clone)}
    dvc(clone, env, "pull")
    assert ran_stages(dvc(clone, env, "repro")) == set()
    run = "outputs/pretrain/dmoco-imb10-lt-d0-s0"
    for name in ("model.pt", "memory.pt"):
        assert (clone / run / name).read_bytes() == (root / run / name).read_bytes()

    (clone / "reports/summary.json").unlink()
    assert ran_stages(dvc(clone, env, "repro")) == {"report"}  # rebuilt from the pulled outputs alone
    assert (clone / "reports/summary.json").read_text() == (root / "reports/summary.json").read_text()
    # Retraining in the other checkout writes the same bytes: DVC hashes agree across machines of a kind.
    dvc(clone, env, "repro", "--force", "--single-item", "pretrain@dmoco-10-lt-0-0")
    assert (clone / run / "model.pt").read_bytes() == (root / run / "model.pt").read_bytes()


def test_second_repro_does_nothing_and_a_new_setting_reruns_only_its_stages(study):
    root, env, _ = study
    # Bytecode beside the sources (Python writes it unless PYTHONDONTWRITEBYTECODE) changes no code dependency.
    (root / "duel/callbacks/__pycache__").mkdir(exist_ok=True)
    (root / "duel/callbacks/__pycache__/base.cpython-311.pyc").write_bytes(b"\x00")
    again = dvc(root, env, "repro")
    assert ran_stages(again) == set()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sweep"]["imbalance"] = [1, 10]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = dvc(root, env, "repro")
    assert ran_stages(changed) == {
        "prepare@1-0",
        "pretrain@moco-1-lt-0-0",
        "pretrain@dmoco-1-lt-0-0",
        "probe@moco-1-lt-0-0",
        "probe@dmoco-1-lt-0-0",
        "report",
    }
    for table in ("linear_top1", "knn_top1"):
        values = pd.read_csv(root / f"reports/{table}.csv", index_col="method")
        assert list(values.index) == ["moco", "dmoco"] and list(values.columns) == ["1", "10"], table
        assert percent_above_chance(values), table
    assert "| method | r=1 | r=10 |" in (root / "reports/results.md").read_text()


def test_analysis_notebook_runs_on_the_study(study, monkeypatch):
    root, _, _ = study
    nb = nbformat.read(root / "notebooks/analysis.ipynb", as_version=4)
    # The kernel inherits this environment: it imports the copy's code, so mlflow.db resolves to the copy.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(root))
    nbclient.NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(root / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(o.output_type == "display_data" for o in outputs) == 3  # two comparisons and the memory diagnostics
    tables = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "dmoco" in tables and "memory_entropy" in tables


def test_the_study_names_its_code_and_turns_stale_after_a_change_to_it(study):
    """reports/provenance.json holds what dvc.lock recorded for the study's stages; a change to a file
    a pretrain stage depends on makes the study stale until `dvc repro` remakes it."""
    root, env, _ = study
    record = json.loads((root / "reports/provenance.json").read_text())
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    code = {
        d["path"]: [d["md5"]]
        for name, stage in lock.items()
        if name.split("@")[0] in ("prepare", "pretrain", "probe")
        for d in stage["deps"]
        if not d["path"].startswith("outputs/")
    }
    assert record["code"] == dict(sorted(code.items())) and "duel/memory.py" in code
    assert record["commit"] == sh(["git", "rev-parse", "HEAD"], root, env).strip() and record["uncommitted"] == []
    assert "by code " in (root / "reports/results.md").read_text()
    provenance = [sys.executable, "-m", "pipeline", "provenance", "--strict"]
    assert "reports  current: made by" in sh(provenance, root, env)

    with (root / "duel/memory.py").open("a") as f:
        f.write("# a change\n")
    proc = subprocess.run(provenance, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "stale: " in proc.stdout and "changed since: duel/memory.py" in proc.stdout
    remade = ran_stages(dvc(root, env, "repro"))
    assert "pretrain@dmoco-10-lt-0-0" in remade and "report" in remade
    assert "reports  current: made by" in sh(provenance, root, env)
    assert json.loads((root / "reports/provenance.json").read_text())["uncommitted"] == ["duel/memory.py"]
