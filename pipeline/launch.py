"""`python -m pipeline launch`: a study's stale stage instances as Ray tasks, recorded by DVC (docs/cluster.md).

This process is the driver, and the only one that runs DVC. It holds the repository's lock for the whole
launch, as `dvc repro` does, so a second launcher or a `dvc repro` on the same checkout is refused by
DVC itself. It takes the graph, the order and each stage's staleness from DVC's API, as `dvc repro`
plans them (`dvc.repo.reproduce`: collect_stages, get_active_graph, plan_repro; `Stage.changed`, the run
cache's `restore`; tested against the DVC that pyproject.toml pins). An instance is submitted once
everything upstream of it is recorded, and checked for staleness then, so an upstream rerun that wrote
the same bytes leaves it alone, as in `dvc repro`. When a task ends, the driver records its stage with
`Repo.commit`, the code behind `dvc commit`: dvc.lock and the run cache are written by DVC.

A stage that fails is not retried (its error stays an error): what depends on it is skipped, the rest
finishes, and the launch exits non-zero naming each failed stage and its log (`dvc repro --keep-going`).
Ray retries a task only when its worker or node is lost; a pretrain resumes from its checkpoint then.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from duel.errors import DuelError
from pipeline.portable import environment
from pipeline.tracking import is_server, tracking_uri

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

LOGS = Path("logs/launch")  # per instance: <stage>.log (its output) and <stage>.json (node, attempt); summary.json
JOIN_WITHIN = 30  # seconds to join a cluster at --address before giving up
SYSTEM_RETRIES = 3  # reruns of a task whose worker or node was lost (never of one whose command failed)
# The local instance listens on the loopback address only: Ray's own switch for clusters on one machine.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
RAY_MISSING = "Ray is not installed in this environment; run `make setup` (or `pip install ray==2.60.0`)"

WAITING, RUNNING, DONE, UP_TO_DATE, RESTORED, FAILED, SKIPPED = (
    "waiting",
    "running",
    "ran",
    "up to date",
    "restored from the run cache",
    "failed",
    "skipped",
)
FINISHED = (DONE, UP_TO_DATE, RESTORED)


@dataclass(frozen=True)
class Demand:
    """What one instance asks of a node."""

    cpus: float
    gpus: int
    subprocess_only: bool = False  # its own process group: a data-parallel pretrain under torchrun

    def __str__(self) -> str:
        return f"{self.cpus:g} CPU" + (f" and {self.gpus} GPU" if self.gpus else "")


def stage_options(args: list[str]) -> tuple[str, dict[str, Any]] | None:
    """A `python -m pipeline <command> ...` line parsed by the command's own options (None for another
    command): the launcher reads a stage's params file and method exactly as the stage will."""
    if args[:3] != ["python", "-m", "pipeline"] or len(args) < 4:
        return None
    import typer

    from pipeline.cli import build_app

    group = typer.main.get_command(build_app())
    command = group.get_command(None, args[3])  # type: ignore[arg-type]
    if command is None:
        return None
    return args[3], command.make_context(args[3], args[4:], resilient_parsing=True).params


def demand(cmd: str) -> Demand:
    """A stage's resources from its own params: per process `runtime.threads` CPUs (1 when null) and its
    `runtime.num_workers` data loaders; a pretrain on CUDA the GPUs of its `pretrain.nproc_per_node`
    processes (on one node), a probe on CUDA one GPU; a command of another program one CPU."""
    import shlex

    from duel.config import for_method
    from pipeline.common import read_params

    parsed = stage_options(shlex.split(cmd))
    if parsed is None:
        return Demand(1, 0, subprocess_only=True)
    command, options = parsed
    cfg = read_params(Path(options.get("params") or "params.yaml"))
    threads = (cfg.runtime.threads or 1) + cfg.runtime.num_workers
    cuda = cfg.runtime.device.startswith("cuda")
    if command == "pretrain":
        nproc = for_method(cfg.pretrain, options["method"]).nproc_per_node
        return Demand(threads * nproc, nproc if cuda else 0, subprocess_only=nproc > 1)
    return Demand(threads, 1 if cuda and command == "probe" else 0)


@dataclass
class Instance:
    stage: Stage
    name: str
    demand: Demand
    upstream: list[str]
    state: str = WAITING
    seconds: float = 0.0
    stale: bool = False  # found stale when its upstream was recorded, and not in the run cache
    submitted: float = 0.0  # when the driver handed it to Ray
    task: dict[str, Any] = field(default_factory=dict)  # the last attempt's record (node, devices, started, ended)
    error: str = ""

    @property
    def kind(self) -> str:
        return self.name.split("@")[0]

    @property
    def node(self) -> str:
        return self.task.get("node", "")

    @property
    def devices(self) -> list[str]:
        return self.task.get("devices", [])

    @property
    def attempts(self) -> int:
        return self.task.get("attempt", 0)


def plan(repo: Repo, targets: list[str]) -> list[Stage]:
    """The stage instances `dvc repro TARGETS` would visit, in its order (every stage when no target)."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.exceptions import NoOutputOrStageError, StageNotFoundError
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage.exceptions import StageNotFound

    try:
        stages = collect_stages(repo, targets or [PROJECT_FILE])
    except (StageNotFound, StageNotFoundError, NoOutputOrStageError) as exc:
        missing = next((t for t in targets if t in str(exc)), " ".join(targets))
        raise DuelError(
            f"{missing} is not a stage of dvc.yaml nor an output of one; `dvc stage list` names them"
        ) from None
    return plan_repro(get_active_graph(repo.index.graph), stages)


def address_answers(address: str) -> None:
    """A cluster's head answers at host:port within seconds, or the launch stops in one line."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise DuelError(
            f"no Ray cluster answers at {address} ({exc}); start its head with `ray start --head` "
            "and pass its address (host:6379), or leave --address out for a local instance"
        ) from None


@contextlib.contextmanager
def within(seconds: int, message: str) -> Iterator[None]:
    """Raise DuelError(message) if the block takes longer than `seconds` (main thread)."""

    def expire(signum: int, frame: object) -> None:
        raise DuelError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def connect(address: str | None) -> Any:
    """Join the cluster at `address`, or start a local instance for this command alone; the ray module."""
    if address is None:
        os.environ.update(LOOPBACK_ONLY)  # read when Ray is imported
        # Ray's default for a local instance, said explicitly: Ray then does not warn that it chose it.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise DuelError(RAY_MISSING) from None
    # ERROR: a local instance announces its start and its token at WARNING, noise beside the progress.
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        # address="local": always a new instance, never a cluster an earlier run left behind.
        ray.init(address="local", include_dashboard=False, object_store_memory=128 * 2**20, **options)
    else:
        if address != "auto":
            address_answers(address)
        with within(JOIN_WITHIN, f"could not join the Ray cluster at {address} within {JOIN_WITHIN} s"):
            ray.init(address=address, **options)
    return ray


def machines(ray: Any) -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node["Alive"]]


def check_cluster(ray: Any, instances: list[Instance]) -> None:
    """Refuse, before anything runs, what the cluster could never run or would corrupt."""
    nodes = machines(ray)
    hosts = {node["NodeManagerAddress"] for node in nodes}
    if len(hosts) > 1 and not is_server(tracking_uri()):
        raise DuelError(
            f"the cluster spans {len(hosts)} machines but MLflow logs to {tracking_uri()}, a SQLite file that "
            "is unsafe over a network filesystem; start `mlflow server` on the head and set "
            "MLFLOW_TRACKING_URI=http://<head>:5000 (docs/cluster.md)"
        )
    resources = [node["Resources"] for node in nodes]
    for inst in instances:
        d = inst.demand
        if not any(r.get("CPU", 0) >= d.cpus and r.get("GPU", 0) >= d.gpus for r in resources):
            largest = max(resources, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
            raise DuelError(
                f"{inst.name} needs {d} on one node, and no node of this cluster has that (the largest has "
                f"{largest.get('CPU', 0):g} CPU and {largest.get('GPU', 0):g} GPU); add such a node, or lower "
                "runtime.threads / pretrain.nproc_per_node, or set runtime.device: cpu"
            )


def worker_env(root: Path, cmd: str) -> dict[str, str]:
    """The environment a worker process starts with for this stage: the project's code first on the path,
    the tracking server, and what `runtime.portable` must fix before torch loads."""
    import shlex

    args = shlex.split(cmd)
    env = {"PYTHONPATH": str(root), **(environment(args[3:]) if args[:3] == ["python", "-m", "pipeline"] else {})}
    if os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env


def load_costs(path: Path) -> dict[str, float]:
    """`--simulate`: seconds per instance, keyed by stage (`pretrain`) or by a pattern of instance names
    (`pretrain@sdclr-*`)."""
    try:
        costs = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DuelError(f"--simulate {path}: cannot read it ({exc}); give a YAML file of stage: seconds") from None
    if not isinstance(costs, dict) or not all(isinstance(v, int | float) and v >= 0 for v in costs.values()):
        raise DuelError(f"--simulate {path}: not a mapping of stage name to seconds, e.g. {{pretrain: 10}}")
    return {str(k): float(v) for k, v in costs.items()}


def cost(costs: dict[str, float], name: str) -> float:
    """An instance's simulated seconds: the first key (in the file's order) that matches its name, a
    stage's name matching all its instances; 0 when none does."""
    from fnmatch import fnmatchcase

    stage = name.split("@")[0]
    return next((v for k, v in costs.items() if k == stage or fnmatchcase(name, k)), 0.0)


class Launch:
    """One launch: the instances, their Ray tasks and what DVC records."""

    def __init__(self, repo: Repo, stages: list[Stage], costs: dict[str, float] | None) -> None:
        self.repo, self.costs = repo, costs
        self.root = Path(repo.root_dir)
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        names = {stage.addressing for stage in stages}
        self.instances = {
            s.addressing: Instance(s, s.addressing, demand(s.cmd) if s.cmd else Demand(0, 0), []) for s in stages
        }
        for stage in stages:
            self.instances[stage.addressing].upstream = [
                up.addressing for up in graph.successors(stage) if up.addressing in names
            ]
        self.tasks: dict[Any, Instance] = {}
        self.tic = time.monotonic()

    def stale(self) -> list[Instance]:
        """The instances that will run: stale now, or downstream of one that is (a simulation: all)."""
        if self.costs is not None:
            return list(self.instances.values())
        will: set[str] = set()
        for inst in self.instances.values():  # DVC's order: upstream first
            if any(up in will for up in inst.upstream) or inst.stage.changed():
                will.add(inst.name)
        return [inst for inst in self.instances.values() if inst.name in will]

    def paths(self, inst: Instance) -> tuple[Path, Path]:
        return self.root / LOGS / f"{inst.name}.log", self.root / LOGS / f"{inst.name}.json"

    def submit(self, ray: Any, inst: Instance) -> None:
        from pipeline import worker

        log, status = self.paths(inst)
        log.parent.mkdir(parents=True, exist_ok=True)
        status.unlink(missing_ok=True)
        options = {"num_cpus": inst.demand.cpus, "num_gpus": inst.demand.gpus, "max_retries": SYSTEM_RETRIES}
        if self.costs is not None:
            # A sleep touches no GPU: its worker is reused, so the schedule is timed without the start-up
            # of the fresh worker each real GPU instance gets (seconds, against its minutes or hours).
            task = ray.remote(max_calls=0)(worker.simulate_instance).options(**options)
            ref = task.remote(inst.name, cost(self.costs, inst.name), str(status))
        else:
            options["runtime_env"] = {"env_vars": worker_env(self.root, inst.stage.cmd)}
            task = ray.remote(worker.run_instance).options(**options, retry_exceptions=False)
            ref = task.remote(
                str(self.root), inst.name, inst.stage.cmd, str(log), str(status), inst.demand.subprocess_only
            )
        inst.state, inst.submitted = RUNNING, time.time()
        self.tasks[ref] = inst

    def start_ready(self, ray: Any) -> None:
        """Submit, in DVC's order, every waiting instance whose upstream is recorded, as far as the cluster
        has room beside what Ray already holds: an instance goes to Ray when it can start, so instances
        start in DVC's order, not in the order Ray's queue would take them."""
        from dvc.stage.cache import RunCacheNotFoundError

        total = ray.cluster_resources()
        cpus = sum(i.demand.cpus for i in self.tasks.values())
        gpus = sum(i.demand.gpus for i in self.tasks.values())
        for inst in self.instances.values():
            if inst.state != WAITING:
                continue
            ups = [self.instances[u] for u in inst.upstream]
            if any(up.state in (FAILED, SKIPPED) for up in ups):
                inst.state = SKIPPED
                failed = next(up for up in ups if up.state in (FAILED, SKIPPED))
                inst.error = f"upstream {failed.name} {failed.state}"
                continue
            if not all(up.state in FINISHED for up in ups):
                continue
            if self.costs is None and not inst.stale:  # decided once, when its upstream is recorded
                if not inst.stage.changed():
                    inst.state = UP_TO_DATE
                    continue
                # As `dvc repro` runs a stale stage: its outputs removed, then the run cache tried first.
                inst.stage.remove_outs(ignore_remove=False, force=False)
                try:
                    self.repo.stage_cache.restore(inst.stage)
                except RunCacheNotFoundError:
                    inst.stale = True
                else:
                    self.record(inst)
                    inst.state = RESTORED
                    continue
            d = inst.demand
            if cpus + d.cpus > total.get("CPU", 0) or gpus + d.gpus > total.get("GPU", 0):
                if not self.tasks:  # nothing running will free room: nodes were lost since the start
                    inst.state, inst.error = FAILED, f"needs {d}, more than the cluster has left"
                continue
            self.submit(ray, inst)
            cpus, gpus = cpus + d.cpus, gpus + d.gpus

    def record(self, inst: Instance) -> None:
        """Record the instance's stage as `dvc commit` does: its deps, outs and dvc.lock entry."""
        self.repo.commit(inst.name, force=True)

    def finish(self, ray: Any, ref: Any) -> Instance:
        """Take a finished task's result; record its stage when its command succeeded."""
        inst = self.tasks.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the task could not be run: its worker or node lost past every retry
            inst.state, inst.error = FAILED, str(exc).strip().splitlines()[-1]
            inst.seconds = time.time() - inst.submitted
            return inst
        inst.task = result
        inst.seconds = result["seconds"]
        if result["code"] != 0:
            inst.state, inst.error = FAILED, f"exit {result['code']}"
            return inst
        inst.state = DONE
        if self.costs is None:
            try:
                self.record(inst)
            except Exception as exc:  # an output the command did not write
                inst.state, inst.error = FAILED, f"not recorded: {exc}"
        return inst

    def running_info(self, inst: Instance) -> None:
        """Node and attempt of a running instance, from the status file its task writes when it starts."""
        with contextlib.suppress(OSError, ValueError):
            inst.task = json.loads(self.paths(inst)[1].read_text())

    def run(self, ray: Any, progress: Progress) -> None:
        while True:
            self.start_ready(ray)
            if not self.tasks:
                break
            ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=1.0)
            for ref in ready:
                progress.finished(self.finish(ray, ref))
            for inst in self.tasks.values():
                self.running_info(inst)
            progress.update()

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "stage": i.name,
                "outcome": i.state,
                "node": i.node,
                "devices": i.devices,
                "visible": i.task.get("visible", ""),
                "seconds": round(i.seconds, 3),
                "attempts": i.attempts,
                "submitted": i.submitted,
                "started": i.task.get("started"),
                "ended": i.task.get("ended"),
                "error": i.error,
            }
            for i in self.instances.values()
        ]


class Progress:
    """Stages done / running / waiting / failed, where each runs, elapsed and an estimate of the rest: a live
    table on a terminal, a line per finished instance elsewhere (logs, CI)."""

    def __init__(self, launch: Launch, console: Any) -> None:
        self.launch, self.console = launch, console
        self.live: Any = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def counts(self) -> dict[str, int]:
        """Running: started on a node; waiting: for its upstream, or in Ray's queue for resources."""
        instances = self.launch.instances.values()
        running = sum(i.state == RUNNING and bool(i.task) for i in instances)
        return {
            "done": sum(i.state in FINISHED for i in instances),
            "running": running,
            "waiting": sum(i.state in (WAITING, RUNNING) for i in instances) - running,
            "failed": sum(i.state in (FAILED, SKIPPED) for i in instances),
        }

    def remaining(self) -> float | None:
        """Seconds left: each unfinished instance costs the mean of its stage's finished runs (of all
        finished runs while its stage has none), shared by the instances running now; None before any
        instance has run."""
        ran: dict[str, list[float]] = {}
        for inst in self.launch.instances.values():
            if inst.state == DONE:
                ran.setdefault(inst.kind, []).append(inst.seconds)
        if not ran:
            return None
        everything = [s for seconds in ran.values() for s in seconds]
        left, now, lanes = 0.0, time.time(), 0
        for inst in self.launch.instances.values():
            if inst.state in (WAITING, RUNNING):
                seconds = ran.get(inst.kind, everything)
                mean = sum(seconds) / len(seconds)
                started = inst.task.get("started", now)
                left += max(0.0, mean - (now - started)) if inst.state == RUNNING else mean
                lanes += inst.state == RUNNING
        return left / max(1, lanes)

    def headline(self) -> str:
        c = self.counts()
        elapsed = time.monotonic() - self.launch.tic
        rest = self.remaining()
        eta = "?" if rest is None else clock(rest)
        return (
            f"{c['done']} done · {c['running']} running · {c['waiting']} waiting · {c['failed']} failed"
            f" · {clock(elapsed)} elapsed · ~{eta} left"
        )

    def render(self) -> Any:
        from rich.table import Table

        table = Table(title=self.headline(), title_justify="left", box=None)
        for column in ("running", "node", "devices", "attempt", "elapsed"):
            table.add_column(column)
        now = time.time()
        for inst in self.launch.instances.values():
            if inst.state == RUNNING:
                table.add_row(
                    inst.name,
                    inst.node or "(queued)",
                    ",".join(inst.devices),
                    str(inst.attempts or ""),
                    clock(now - inst.task["started"]) if inst.task else "",
                )
        return table

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def finished(self, inst: Instance) -> None:
        where = f" on {inst.node}" if inst.node else ""
        tail = f": {inst.error}" if inst.error else ""
        self.console.print(f"{inst.name} {inst.state}{where} in {inst.seconds:.1f} s{tail}  [{self.headline()}]")
        self.update()


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def print_summary(console: Any, launch: Launch) -> None:
    from rich.table import Table

    table = Table(title="stage instances", title_justify="left")
    for column in ("stage", "outcome", "node", "devices", "seconds", "attempts"):
        table.add_column(column, justify="right" if column in ("seconds", "attempts") else "left")
    for inst in launch.instances.values():
        ran = inst.state in (DONE, FAILED) and inst.attempts
        table.add_row(
            inst.name,
            inst.state,
            inst.node,
            ",".join(inst.devices),
            f"{inst.seconds:.1f}" if ran else "",
            str(inst.attempts) if ran else "",
        )
    console.print(table)


@contextlib.contextmanager
def repository() -> Iterator[Repo]:
    """The DVC repository here, locked as `dvc repro` locks it: a second launcher stops in one line."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    try:
        repo = Repo()
    except NotDvcRepoError:
        raise DuelError("not in a DVC repository; run `python -m pipeline launch` from the project root") from None
    try:
        with repo, lock_repo(repo):
            yield repo
    except LockError:
        raise DuelError(
            "another DVC process (a launch, a dvc repro) holds this repository's lock; wait for it to end "
            "(a launch stopped with kill -9 leaves no lock behind)"
        ) from None


def launch(targets: list[str], address: str | None, simulate: Path | None) -> None:
    """Run the stale stage instances of `targets` (all when none) on Ray; raise DuelError naming the failures."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    costs = load_costs(simulate) if simulate else None
    with repository() as repo:
        run = Launch(repo, plan(repo, targets), costs)
        todo = run.stale()
        if not todo:
            console.print(f"all {len(run.instances)} stage instances are up to date")
            return
        ray = connect(address)
        # After Ray's start, which configures logging: DVC's "Updating lock file" for every instance.
        logging.getLogger("dvc").setLevel(logging.WARNING)
        try:
            check_cluster(ray, todo)
            nodes = machines(ray)
            cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
            gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
            verb = "simulating" if costs is not None else "launching"
            console.print(
                f"{verb} {len(todo)} of {len(run.instances)} stage instances on {len(nodes)} Ray node(s) "
                f"({cpus:g} CPU, {gpus:g} GPU); logs in {LOGS}/"
            )
            with Progress(run, console) as progress:
                run.run(ray, progress)
        finally:
            ray.shutdown()
        write_summary(run)
        print_summary(console, run)
    failed = [i for i in run.instances.values() if i.state == FAILED]
    if failed:
        lines = [f"{i.name} ({i.error}; log: {LOGS / (i.name + '.log')})" for i in failed]
        skipped = sum(i.state == SKIPPED for i in run.instances.values())
        raise DuelError(f"{len(failed)} stage instance(s) failed, {skipped} skipped after them: " + "; ".join(lines))


def write_summary(run: Launch) -> None:
    from duel.files import write_json

    write_json(run.root / LOGS / "summary.json", {"instances": run.summary()})
