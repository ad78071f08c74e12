"""Faults during a run, on real local Ray with the tiny models: actors killed with SIGKILL, a stage that
hangs, rows a worker raises on, and the error budget."""

import logging
import os
import re
import signal
import socket
import threading
import time

import pyarrow.parquet as pq
import pytest
from helpers import small_run_config

from pipelines.progress import RunHalted, progress_line
from pipelines.run import run
from pipelines.store import TMP_PREFIX, shard_files


def rows_of(out, kind, columns=("pair_id",)):
    return [r for f in shard_files(out, kind) for r in pq.read_table(f, columns=list(columns)).to_pylist()]


def alive_actors(ray, stage: str) -> list:
    """The live actors of a pool, found as an operator would: by class name (`MapWorker(MapBatches(<stage>))`)."""
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         detail=True, limit=1000)
    return [a for a in actors if f"MapBatches({stage})" in a.class_name]


def test_killed_generator_and_judge_actors_are_restarted_and_every_pair_is_written_once(ray_session, tmp_path, caplog):
    # sd at 40 steps is the slow stage, so it still has batches to do when the first shard appears.
    cfg = small_run_config(tmp_path, n_prompts=16, **{
        "filters.semantic_dedup": False, "output.rows_per_file": 2, "generators.sd.batch_size": 2,
        "generators.sd.steps": 40, "generators.flux.batch_size": 2, "categories.composition.panel": "anatomy",
        "categories.composition.rewards": [], "run.progress_s": 2},
        overrides={("judges", "qwen2-vl-a", "batch_size"): 2})
    out = tmp_path / "out"
    killed = {}
    caplog.set_level(logging.INFO, logger="pairforge")

    def kill_mid_run():
        deadline = time.time() + 900
        while not (shard_files(out, "pairs") or shard_files(out, "undecided")) and time.time() < deadline:
            time.sleep(0.1)
        killed["rows_written"] = len(rows_of(out, "pairs") + rows_of(out, "undecided"))
        for stage in ("generator:sd", "judge:qwen2-vl-a"):
            for a in alive_actors(ray_session, stage):
                os.kill(a.pid, signal.SIGKILL)  # the real worker process, as the OOM killer or a crash would
                killed[stage] = a.actor_id

    killer = threading.Thread(target=kill_mid_run, daemon=True)
    killer.start()
    run(cfg)
    killer.join(timeout=60)

    assert {"generator:sd", "judge:qwen2-vl-a"} <= set(killed) and killed["rows_written"] < 16, killed
    # A newcomer's log: a progress line every run.progress_s with rows/s and ETA per category, then "done".
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert len(lines) >= 3 and lines[-1].endswith("| composition 16/16 (done)"), lines
    assert any(re.search(r"\| composition \d+/16 \(\d+\.\d\d/s, ETA \d+:\d\d\)$", line) for line in lines), lines
    ids = [r["pair_id"] for k in ("pairs", "undecided") for r in rows_of(out, k)]
    assert len(ids) == len(set(ids)) == 16 and not shard_files(out, "errors")
    assert not list(out.rglob(f"{TMP_PREFIX}*"))
    from ray.util.state import get_actor

    for stage in ("generator:sd", "judge:qwen2-vl-a"):  # Ray restarted them (max_restarts=-1) and retried their batches
        assert get_actor(killed[stage], address=ray_session.get_runtime_context().gcs_address).num_restarts >= 1


@pytest.fixture
def silent_endpoint():
    """An OpenAI-compatible endpoint that accepts connections and never answers (a hung judge server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[float] = []
    conns = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            accepted.append(time.monotonic())

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1", accepted
    server.close()
    for c in conns:
        c.close()


def test_a_hung_stage_fails_the_run_within_the_watchdog_naming_the_pool(ray_session, tmp_path, silent_endpoint):
    endpoint, accepted = silent_endpoint
    watchdog = 20
    cfg = small_run_config(tmp_path, n_prompts=4, **{
        "filters.semantic_dedup": False, "run.watchdog_s": watchdog,
        "judges": {"stuck": {"model": "served-judge", "backend": "openai", "endpoint": endpoint, "timeout_s": 3600,
                             "max_retries": 0, "pool": {"num_cpus": 0.25}}},
        "panels": {"one": {"judges": ["stuck"], "quorum": 1}},
        "categories.composition.panel": "one", "categories.composition.rewards": []})
    with pytest.raises(RunHalted) as halted:
        run(cfg)
    failed_at = time.monotonic()
    message = str(halted.value)
    assert "\n" not in message and "judge:stuck: a batch of" in message, message
    assert int(re.search(r"no pool made progress for (\d+) s", message)[1]) >= watchdog
    assert accepted and failed_at - accepted[0] < watchdog + 30  # the polling interval and the pool shutdown


def wide_generator(name: str) -> dict:
    """A banner-shaped tiny FLUX (4096 x 16): it generates, but Qwen2-VL's processor rejects images with an
    aspect ratio over 200, so every judge raises on these rows."""
    return {"model": "tiny:flux", "width": 4096, "height": 16, "steps": 2, "guidance_scale": 0.0, "batch_size": 8,
            "call_kwargs": {"max_sequence_length": 64}, "pool": {"num_cpus": 0.25}}


def test_rows_a_worker_raises_on_become_error_records_until_the_budget_runs_out(ray_session, tmp_path):
    cfg = small_run_config(tmp_path, n_prompts=3, categories=("composition", "aesthetics"), **{
        "filters.semantic_dedup": False, "generators.wide_a": wide_generator("wide_a"),
        "generators.wide_b": wide_generator("wide_b"),
        "categories.composition.panel": "anatomy", "categories.composition.rewards": [],
        "categories.aesthetics.panel": "anatomy", "categories.aesthetics.rewards": [],
        "categories.aesthetics.generators": ["wide_a", "wide_b"]})
    out = tmp_path / "out"
    run(cfg)  # 3 bad rows of 6: within the default budget (10 rows), so the run goes on
    errors = rows_of(out, "errors", ("pair_id", "category", "error"))
    assert len(errors) == 3 and {e["category"] for e in errors} == {"aesthetics"}
    assert all(e["error"].startswith("judge:qwen2-vl-a: ValueError: absolute aspect ratio") for e in errors)
    decided = [r for k in ("pairs", "undecided") for r in rows_of(out, k, ("pair_id", "category"))]
    assert len(decided) == len({r["pair_id"] for r in decided}) == 3 and {r["category"] for r in decided} == {"composition"}

    # The next run retries the failed rows; with a budget of one row, it stops and says why.
    strict = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_error_rows": 1, "max_error_share": 0.0})})
    with pytest.raises(RunHalted) as halted:
        run(strict)
    message = str(halted.value)
    assert "\n" not in message and "more than the error budget of 1" in message, message
    assert "judge:qwen2-vl-a: ValueError: absolute aspect ratio" in message and f"{out}/errors/" in message


def test_a_progress_line_gives_rows_rate_and_eta_per_category():
    snap = {"now": 70.0, "first_batch": 10.0, "last_progress": 69.0, "last_ready": 9.0, "actors": {}, "stages": {},
            "errors": [], "done": {"composition": {"pairs": 90, "undecided": 30}, "alignment": {"pairs": 20, "errors": 4}}}
    line = progress_line(snap, {"composition": 120, "alignment": 48})
    # 144 of 168 rows in the 60 s since the first batch: 2.40/s, 24 rows left = 10 s. Errors count as done rows.
    assert line == ("progress: 144/168 rows (86%) after 1:10, 2.40/s, ETA 0:10, 4 errors | composition 120/120 (done), "
                    "alignment 24/48 (0.40/s, ETA 1:00)")
    loading = {**snap, "done": {}, "stages": {"generator:sd": {"ready": 1}, "judge:a": {}},
               "actors": {"x": {"stage": "judge:a", "state": "loading"}}}
    assert progress_line(loading, {"composition": 120}) == \
        "progress: 0/120 rows after 1:10; pools ready 1/2; loading models: judge:a"
