from pathlib import Path

from pipeline import tracking


def test_queued_experiments_log_to_the_store_of_the_checkout_that_queued_them(monkeypatch):
    monkeypatch.setattr(tracking, "PROJECT_ROOT", Path("/home/me/study/.dvc/tmp/exps/tmpab12cd"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.project_root() == Path("/home/me/study")
    assert tracking.tracking_uri() == "sqlite:////home/me/study/mlflow.db"


def test_environment_overrides_the_default_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri() == "http://mlflow.internal:5000"


def test_stage_names_match_dvc_matrix_names():
    assert tracking.stage_name("pretrain", "dmoco", "10", 0) == "pretrain@dmoco-10-0"
    assert tracking.stage_name("report") == "report"
