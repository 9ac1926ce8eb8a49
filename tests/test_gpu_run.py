"""The prepared GPU run (benchmarks/gpu_run.py) runs every section on a CPU at tiny sizes: on a GPU
machine, which has no package registry and little time, it must not fail on a path nobody ran."""

import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import write_image_folder

from duel.methods import METHODS

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_run  # noqa: E402 - a script beside its own helpers, not a package


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_on_a_cpu_at_tiny_sizes(tmp_path):
    write_image_folder(tmp_path / "data", per_class=110, test_per_class=2)
    out = tmp_path / "table.md"
    command = [sys.executable, str(ROOT / "benchmarks/gpu_run.py"), "--tiny", "--data", str(tmp_path / "data")]
    command += ["--steps", "1", "--warmup", "1", "--run-steps", "3", "--compile-methods", "moco", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    sections = [row[0].lstrip("| ").split(" (")[0] for row in rows[1:]]
    assert sections.count("step") == len(METHODS) and sections.count("K") == 3
    assert [r[1] for r in rows if r[0].startswith("| K")] == ["moco", "dmoco (greedy)", "dmoco (topk)"]
    compiled = [r[1:] for r in rows if r[0].startswith("| compile")]
    assert [what for what, _ in compiled] == ["moco", "moco, compiled"] and " x moco " in compiled[1][1], compiled
    pushes = [r[1] for r in rows if r[0] == "| push"]
    assert pushes == ["greedy, K 64, 16 keys, eager", "greedy, K 256, 16 keys, eager"], pushes
    torchrun = next(r for r in rows if r[0] == "| torchrun")
    assert "memories equal on 2 ranks" in torchrun[2], torchrun
    runs = [r[1].split(",")[0] for r in rows if r[0] == "| run"]
    assert runs == ["moco", "dmoco", "dmoco_roll"]
    assert all("late memory entropy" in r[2] and "key staleness" in r[2] for r in rows if r[0] == "| run")


def test_a_failing_method_or_section_is_a_failed_row_and_the_others_still_run(tmp_path, capsys):
    """One GPU call per session: an error in one method's step or in one section must not lose the rest."""

    def broken() -> None:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nsecond line")

    working, failed = gpu_run.first_steps({"moco": lambda: None, "dmoco": broken}, "step")
    assert list(working) == ["moco"]
    first_line = "CUDA error: operation not permitted when stream is capturing"
    assert failed == [("step", "dmoco", f"FAILED: RuntimeError: {first_line}")]

    def section_that_raises() -> list:
        raise ValueError("no memory")

    out = tmp_path / "table.md"
    sections = {"a": lambda: [("a", "x", "1 images/s")], "b": section_that_raises, "c": lambda: [("c", "y", "2")]}
    rows = gpu_run.run_sections(sections, "a machine", out)
    failed_b = ("b", "(the whole section)", "FAILED: ValueError: no memory")
    assert rows == [("a", "x", "1 images/s"), failed_b, ("c", "y", "2")]
    assert out.read_text().splitlines()[-3:] == [f"| {a} | {b} | {c} |" for a, b, c in rows]
    assert "Traceback" in capsys.readouterr().err


def test_a_data_folder_without_train_images_is_refused_before_any_section_runs(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks/gpu_run.py"), "--tiny", "--data", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "has no train/ folder" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "| step" not in proc.stdout
