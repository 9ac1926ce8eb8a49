"""What watches a training run, one callback each (`duel.callbacks.base.Callback`, the protocol)."""

from duel.callbacks.base import Callback
from duel.callbacks.checkpoint import Checkpoint
from duel.callbacks.memory_diagnostics import MemoryDiagnostics
from duel.callbacks.memory_snapshots import MemorySnapshotting
from duel.callbacks.online_eval import OnlineEval
from duel.callbacks.rank_check import RankAgreement
from duel.callbacks.step_log import StepLog

__all__ = [
    "Callback",
    "Checkpoint",
    "MemoryDiagnostics",
    "MemorySnapshotting",
    "OnlineEval",
    "RankAgreement",
    "StepLog",
]
