"""The training engine (duel.engine.Trainer) and its callback protocol: a new monitor is one class in the
list the trainer is given, its state travels through checkpoints by name, and the engine stays small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from duel.callbacks import Callback
from duel.errors import DuelError
from duel.train import lr_factor
from tests.test_train import Interrupt, train_tiny

ROOT = Path(__file__).parents[1]


class LearningRates(Callback):
    """The learning rate of every step: a monitor written outside the engine, with its own state."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_end(self, trainer, loss):
        self.rates.append(trainer.lr)

    def state_dict(self):
        return {"rates": self.rates}

    def load_state_dict(self, state):
        self.rates = list(state["rates"])


class Hooks(Callback):
    """Which hooks ran, in order (steps counted, not listed)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_train_start(self, trainer):
        self.calls.append("train_start")

    def on_train_epoch_start(self, trainer):
        self.calls.append(f"epoch_start {trainer.epoch}")

    def on_train_batch_end(self, trainer, loss):
        self.calls.append("step")

    def on_train_epoch_end(self, trainer):
        # The step log ran first: the epoch's every step is in the history.
        self.calls.append(f"epoch_end {trainer.epoch} history {len(trainer.history)}")

    def on_train_end(self, trainer):
        self.calls.append("train_end")

    def on_save_checkpoint(self, trainer, checkpoint):
        self.calls.append(f"save epoch {checkpoint['epoch']}")


def test_a_new_callback_records_every_steps_learning_rate_through_a_kill_and_resume(tiny_source, tiny_config, tmp_path):
    pre = tiny_config.pretrain
    full = LearningRates()
    _, history, _ = train_tiny(tiny_source, pre, tmp_path / "full.pt", callbacks=[full])
    total = 3 * 7
    assert full.rates == [r["lr"] for r in history] and len(full.rates) == total
    assert full.rates == [pytest.approx(pre.lr * lr_factor(step, total)) for step in range(total)]
    # Its state is in the checkpoint under its name; a resumed run restores it and appends the rest.
    cut = LearningRates()
    with pytest.raises(Interrupt):
        train_tiny(tiny_source, pre, tmp_path / "cut.pt", stop_at_step=10, callbacks=[cut])
    saved = torch.load(tmp_path / "cut.pt", weights_only=False)["callbacks"]
    assert saved["LearningRates"] == {"rates": full.rates[:7]}  # the epoch-1 checkpoint
    resumed = LearningRates()
    train_tiny(tiny_source, pre, tmp_path / "cut.pt", resume=True, callbacks=[resumed])
    assert resumed.rates == full.rates


def test_hooks_run_in_the_loops_order_with_the_step_log_first_and_the_checkpoint_last(
    tiny_source, tiny_config, tmp_path
):
    calls: list[str] = []
    train_tiny(tiny_source, tiny_config.pretrain, tmp_path / "ck.pt", callbacks=[Hooks(calls)])
    epoch = ["step"] * 7
    expected = ["fit_start", "train_start"]
    for e in range(3):
        expected += [f"epoch_start {e}", *epoch, f"epoch_end {e} history {7 * (e + 1)}", f"save epoch {e + 1}"]
    assert calls == [*expected, "train_end"]


def test_a_checkpoint_of_the_code_before_the_engine_is_refused_in_one_line(tiny_source, tiny_config, tmp_path):
    """Checkpoints before the engine kept the diagnostics and snapshots beside the run, not by callback."""
    train_tiny(tiny_source, tiny_config.pretrain, tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=False)
    old = {k: v for k, v in state.items() if k not in ("step", "callbacks")} | {"diagnostics": [], "snapshots": {}}
    torch.save(old, tmp_path / "ck.pt")
    with pytest.raises(DuelError) as caught:
        train_tiny(tiny_source, tiny_config.pretrain, tmp_path / "ck.pt", resume=True)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message == (
        f"checkpoint {tmp_path / 'ck.pt'} was written by an earlier version of this code; "
        "delete it or run without --resume"
    )
    assert (tmp_path / "ck.pt").exists()  # left where it was, for the user to decide


def functions(path: Path) -> list[ast.FunctionDef]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)]


@pytest.mark.parametrize(
    "path",
    ["duel/engine.py", "duel/train.py", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("duel/callbacks/*.py"))],
)
def test_the_training_code_keeps_short_functions_with_few_parameters(path):
    """At most 60 lines a function and 8 parameters (besides self): the loop stays readable in one screen,
    and a new feature arrives as a callback, not as another parameter."""
    for function in functions(ROOT / path):
        args = function.args
        names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        count = len([name for name in names if name not in ("self", "cls")])
        assert count <= 8, f"{path}:{function.lineno} {function.name} has {count} parameters"
        length = function.end_lineno - function.lineno + 1
        assert length <= 60, f"{path}:{function.lineno} {function.name} is {length} lines"
