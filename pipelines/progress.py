"""A run's progress and health: what each pool is doing, rows labelled per category, and the watchdog
and error budget that stop a run which cannot finish.

Pool actors report to one small actor, `RunProgress` (pinned to the driver's node, so losing a worker
node does not lose it): an actor starts loading its model, is ready, starts and finishes a batch; the
labelling stage reports how many rows of each category became pairs, undecided or errors. The driver
reads it from inside Ray Data's execution loop (`RunMonitor`, an execution callback) and
- logs one progress line every `run.progress_s`: rows, rows/s and ETA per category;
- raises `RunHalted` when no pool finished a batch or loaded its model for `run.watchdog_s`, naming
  the pool that holds the oldest unfinished batch or load (its actor, pid and node, and whether that
  node is dead), or when more rows failed than the error budget allows.
Raising inside the execution loop is how Ray Data itself stops on its own no-progress timeout: the
execution fails with that error and its actor pools are shut down.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import ray
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data.exceptions import ExecutionTimeoutError

from schemas.config import RunLimits

log = logging.getLogger("pairforge")

KINDS = ("pairs", "undecided", "errors")
_POLL_S = 2.0  # how often the driver reads the progress actor (one small RPC)


class RunProgress:
    """The run's progress record (a Ray actor; all times are on its clock, seconds since the run's start)."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.actors: dict[str, dict] = {}  # actor id -> stage, pid, node, state (loading | busy | idle), since, rows
        self.stages: dict[str, Counter] = {}  # stage -> actors ready, batches, rows, busy_s
        self.busy: dict[str, Counter] = {}  # stage -> category -> busy seconds (a batch's, split by its rows)
        self.done: dict[str, Counter] = {}  # category -> pairs, undecided, errors
        self.errors: Counter = Counter()  # error message -> rows
        self.last_progress = 0.0
        self.first_batch: float | None = None
        self.last_ready: float | None = None  # when the last actor to load became ready (start-up over)

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def loading(self, stage: str, actor: str, pid: int, node: str) -> None:
        self.stages.setdefault(stage, Counter())
        self.actors[actor] = {"stage": stage, "pid": pid, "node": node, "state": "loading", "since": self._now(), "rows": 0}

    def ready(self, actor: str) -> None:
        a = self.actors[actor]
        a.update(state="idle", since=self._now(), ready_at=self._now())
        self.stages[a["stage"]]["ready"] += 1
        self.last_progress = self.last_ready = self._now()

    def started(self, actor: str, rows: int) -> None:
        self.actors[actor].update(state="busy", since=self._now(), rows=rows)
        if self.first_batch is None:
            self.first_batch = self._now()

    def finished(self, actor: str, rows: int, busy_s: float = 0.0, categories: dict[str, int] | None = None) -> None:
        a = self.actors[actor]
        # An actor's first batch carries its warm-up (lazy init, kernel selection, allocator growth): kept
        # apart so that a plan from a short run can tell the per-row cost from the per-actor one.
        warmup = {"warmup_s": busy_s, "warmup_rows": rows} if not a.get("batches") else {}
        a.update(state="idle", since=self._now(), rows=0, busy_s=a.get("busy_s", 0.0) + busy_s,
                 batches=a.get("batches", 0) + 1)
        self.stages[a["stage"]].update(batches=1, rows=rows, busy_s=busy_s, **warmup)
        by_category = self.busy.setdefault(a["stage"], Counter())
        for category, n in (categories or {}).items():
            by_category[category] += busy_s * n / rows
        self.last_progress = self._now()

    def labelled(self, counts: dict[str, dict[str, int]], errors: list[str]) -> None:
        for category, by_kind in counts.items():
            self.done.setdefault(category, Counter()).update(by_kind)
        self.errors.update(errors)
        self.last_progress = self._now()

    def snapshot(self) -> dict:
        return {"now": self._now(), "last_progress": self.last_progress, "first_batch": self.first_batch,
                "last_ready": self.last_ready,
                "actors": self.actors, "stages": {s: dict(c) for s, c in self.stages.items()},
                "done": {c: dict(v) for c, v in self.done.items()}, "errors": self.errors.most_common(3),
                "busy": {s: dict(c) for s, c in self.busy.items()}}


def start_progress_actor():
    """The run's RunProgress actor, on the driver's node (a worker node may be lost; the driver's node
    is the run itself). num_cpus=0: it must never wait for a CPU the pools hold."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(RunProgress).options(num_cpus=0, scheduling_strategy=here).remote()


def cost_summary(snap: dict, gpus: dict[str, float]) -> dict:
    """What the pools spent, from the progress record at the run's end. Per stage: actors, batches, rows,
    busy seconds (time inside the worker's batches), GPU-seconds (busy seconds times the GPUs an actor
    holds), seconds per row, utilisation (busy seconds over the time its actors were up after loading:
    near 1 for the pool the others wait for), and the busy seconds and rows of each actor's first batch
    (its warm-up is in there). Per category: seconds of each stage per pair the run wrote
    (pairs, undecided and errors). The bottleneck is the stage with the highest utilisation."""
    stages = {}
    for stage, counts in snap["stages"].items():
        actors = [a for a in snap["actors"].values() if a["stage"] == stage and a.get("ready_at") is not None]
        up = sum(snap["now"] - a["ready_at"] for a in actors)
        busy = counts.get("busy_s", 0.0)
        stages[stage] = {"actors": len(actors), "batches": counts.get("batches", 0), "rows": counts.get("rows", 0),
                         "busy_s": round(busy, 3), "gpu_s": round(busy * gpus.get(stage, 0.0), 3),
                         "s_per_row": round(busy / counts["rows"], 4) if counts.get("rows") else None,
                         "utilisation": round(busy / up, 3) if up > 0 else None,
                         "warmup_s": round(counts.get("warmup_s", 0.0), 3), "warmup_rows": counts.get("warmup_rows", 0)}
    pairs = {c: sum(v.values()) for c, v in snap["done"].items()}
    per_pair = {c: {s: round(by_cat.get(c, 0.0) / n, 4) for s, by_cat in snap.get("busy", {}).items() if by_cat.get(c)}
                for c, n in pairs.items() if n}
    ranked = [s for s in stages if stages[s]["utilisation"] is not None]
    bottleneck = max(ranked, key=lambda s: (stages[s]["utilisation"], stages[s]["busy_s"])) if ranked else None
    busy = {s: {c: round(v, 3) for c, v in by_cat.items()} for s, by_cat in snap.get("busy", {}).items()}
    return {"stages": stages, "s_per_pair": per_pair, "bottleneck": bottleneck, "pairs": pairs, "busy_by_category": busy}


def cost_line(cost: dict) -> str:
    """One log line: the bottleneck and each category's busy seconds per pair summed over stages."""
    b = cost["bottleneck"]
    head = f"cost: bottleneck {b} ({cost['stages'][b]['utilisation']:.0%} busy)" if b else "cost: no pool ran"
    cats = ", ".join(f"{c} {sum(v.values()):.2f} s/pair" for c, v in cost["s_per_pair"].items())
    return f"{head}{' | ' + cats if cats else ''} (busy seconds summed over pools; per stage in manifest.json)"


class RunHalted(ExecutionTimeoutError):
    """The run was stopped: a pool made no progress for `run.watchdog_s`, or the error budget ran out.
    Subclasses Ray Data's no-progress error so that Ray Data treats it as the self-explaining abort it is
    (no internal-error banner, no stack dump) when the execution loop raises it."""


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def progress_line(snap: dict, planned: dict[str, int]) -> str:
    """One line: rows done of planned, rows/s since the first batch started (model loading excluded),
    ETA; then the same per category; before any row, which pools are still loading their models."""
    done = {c: sum(snap["done"].get(c, {}).values()) for c in planned}
    total, want = sum(done.values()), sum(planned.values())
    errors = sum(v.get("errors", 0) for v in snap["done"].values())
    if not total:
        loading = sorted({a["stage"] for a in snap["actors"].values() if a["state"] == "loading"})
        ready = sum(1 for s in snap["stages"].values() if s.get("ready"))
        waiting = f"; loading models: {', '.join(loading)}" if loading else ""
        return f"progress: 0/{want} rows after {_clock(snap['now'])}; pools ready {ready}/{len(snap['stages'])}{waiting}"
    elapsed = max(snap["now"] - (snap["first_batch"] or 0.0), 1e-6)

    def rate_eta(n: int, of: int) -> str:
        if n >= of:
            return "done"
        rate = n / elapsed
        return f"{rate:.2f}/s, ETA {_clock((of - n) / rate)}" if rate else "0/s"

    cats = ", ".join(f"{c} {done[c]}/{n} ({rate_eta(done[c], n)})" for c, n in planned.items())
    return (f"progress: {total}/{want} rows ({total / want:.0%}) after {_clock(snap['now'])}, {rate_eta(total, want)}"
            f"{f', {errors} errors' if errors else ''} | {cats}")


def _dead_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}


def stall_message(snap: dict, watchdog_s: float) -> str:
    """Which pool stalled the run: one with an actor on a dead node (the actor and the batches it held wait
    for a node with the pool's resources), else the one with the oldest unfinished batch or model load."""
    stalled = snap["now"] - snap["last_progress"]
    head = f"run halted: no pool made progress for {stalled:.0f} s (run.watchdog_s = {watchdog_s:g})"
    dead = _dead_nodes()
    lost = [(i, a) for i, a in snap["actors"].items() if a["node"] in dead]
    working = sorted((item for item in snap["actors"].items() if item[1]["state"] != "idle"), key=lambda x: x[1]["since"])
    if not lost and not working:
        return (f"{head}; no pool has a batch in flight or a model loading: Ray is waiting for resources "
                "(see `ray status`; a pool that takes every CPU starves Ray Data's read and write tasks)")
    actor_id, a = (lost or working)[0]
    where = f"actor {actor_id[:12]} (pid {a['pid']}, node {a['node'][:12]})"
    if lost:
        what = (f"{where} was on a node that is now dead; the actor restarts, and the batches it held are "
                "retried, once a node with the pool's resources joins (re-run then)")
    elif a["state"] == "busy":
        what = f"a batch of {a['rows']} rows has been running for {snap['now'] - a['since']:.0f} s on {where}"
    else:
        what = f"an actor has been loading its model for {snap['now'] - a['since']:.0f} s ({where})"
    others = sorted({x["stage"] for _, x in lost + working} - {a["stage"]})
    also = f"; also waiting: {', '.join(others)}" if others else ""
    return f"{head}: {a['stage']}: {what}{also}"


def budget_message(snap: dict, allowed: int, limits: RunLimits, planned: int, out: str) -> str:
    errors = sum(v.get("errors", 0) for v in snap["done"].values())
    done = sum(sum(v.values()) for v in snap["done"].values())
    common = "; ".join(f"{n} x {msg[:200]!r}" for msg, n in snap["errors"])
    return (f"run halted: {errors} of {done} rows failed so far, more than the error budget of {allowed} "
            f"(the larger of run.max_error_rows = {limits.max_error_rows} and run.max_error_share = "
            f"{limits.max_error_share:g} of {planned} planned rows). Most common: {common}. Failed rows written so far "
            f"are in {out}/errors/ and are retried by the next run; fix the cause, or raise the budget")


class RunMonitor(ExecutionCallback):
    """Ray Data execution callback (instantiated by Ray Data, once per execution) that runs the active
    monitor's check on every step of the execution loop. The monitor is a class attribute because Ray
    Data creates callbacks from their class, with no arguments."""

    active: Watch | None = None

    def on_execution_step(self, executor) -> None:
        if RunMonitor.active is not None:
            RunMonitor.active.check()


class Watch:
    """What the driver does with the progress actor while the pools run (see the module docstring)."""

    def __init__(self, progress, limits: RunLimits, planned: dict[str, int], out: str):
        self.progress, self.limits, self.out = progress, limits, out
        self.planned = {c: n for c, n in planned.items() if n}
        total = sum(self.planned.values())
        self.allowed = max(limits.max_error_rows, int(limits.max_error_share * total))
        self.next_poll = self.next_line = time.monotonic() + _POLL_S
        self.snap: dict | None = None

    def poll(self) -> dict | None:
        try:
            self.snap = ray.get(self.progress.snapshot.remote(), timeout=30)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            log.warning("the progress actor did not answer (%s); progress and watchdog skip a beat", type(e).__name__)
        return self.snap

    def check(self, final: bool = False) -> None:
        """Every step of the execution loop (cheap until the next poll is due), and once after it (`final`:
        the last progress line and the error budget over every row, which a short run may finish before
        the first poll)."""
        now = time.monotonic()
        if now < self.next_poll and not final:
            return
        self.next_poll = now + _POLL_S
        snap = self.poll()
        if snap is None:
            return
        if now >= self.next_line or final:
            self.next_line = now + self.limits.progress_s
            log.info(progress_line(snap, self.planned))
        if sum(v.get("errors", 0) for v in snap["done"].values()) > self.allowed:
            raise RunHalted(budget_message(snap, self.allowed, self.limits, sum(self.planned.values()), self.out))
        watchdog = self.limits.watchdog_s
        if watchdog is not None and not final and snap["now"] - snap["last_progress"] >= watchdog:
            raise RunHalted(stall_message(snap, watchdog))

    def __enter__(self) -> Watch:
        RunMonitor.active = self
        return self

    def __exit__(self, *exc) -> None:
        RunMonitor.active = None
