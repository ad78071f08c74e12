"""The output store under faults: a write task SIGKILLed mid-task and retried by Ray Data, two runs on one
output directory (real `python -m pipelines.run` processes), stale leases."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle
import yaml
from helpers import REPO, small_run_config

from pipelines.lease import LEASE_NAME, OutputBusy, OutputLease
from pipelines.records import row_schema
from pipelines.store import KINDS, ShardSink, schema_for, shard_files
from schemas.pair import validate_table
from workers.publish import TMP_PREFIX, owned_temps, publish_atomically

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module


class KilledOnceSink(ShardSink):
    """The real ShardSink, whose first write attempt SIGKILLs its own Ray worker process as soon as one of
    its shards is visible. The marker file makes the retry (a new worker) write normally."""

    def __init__(self, out, run_id, rows_per_file, marker: Path):
        super().__init__(out, run_id, rows_per_file)
        self.marker = marker

    def write(self, blocks, ctx):
        if not self.marker.exists():
            def kill_after_first_shard():
                while not (visible := [str(f) for k in KINDS for f in shard_files(self.out, k)]):
                    time.sleep(0.0005)
                self.marker.write_text(json.dumps(visible))
                os.kill(os.getpid(), signal.SIGKILL)

            threading.Thread(target=kill_after_first_shard, daemon=True).start()
        return super().write(blocks, ctx)


def work_rows(n: int) -> pa.Table:
    """Finished rows as the labeler emits them: three kinds over two categories."""
    kinds, categories = ("pairs", "pairs", "undecided", "errors"), ("composition", "aesthetics")
    return pa.Table.from_pylist([
        {"pair_id": f"{i:024x}", "category": categories[i % 2], "prompt": f"prompt {i}", "prompt_id": f"{i:016x}",
         "prompt_source": "test", "_kind": kinds[i % 4], "reason": "tie", "error": "boom", "label_source": "vlm_panel"}
        for i in range(n)], schema=row_schema())


def test_a_write_task_killed_after_its_first_shard_is_retried_exactly_once(ray_session, tmp_path):
    rows, out, marker = work_rows(120), tmp_path / "out", tmp_path / "killed"
    sink = KilledOnceSink(out, "20260101T000000Z_abcdef", rows_per_file=1, marker=marker)
    ray_session.data.from_arrow(rows).write_datasink(sink)  # one write task: 120 shards of one row

    visible_at_kill = json.loads(marker.read_text())  # the first attempt died with part of its shards out
    files = {k: shard_files(out, k) for k in KINDS}
    n_files = sum(len(f) for f in files.values())
    assert 1 <= len(visible_at_kill) < n_files
    ids = []
    for kind, kind_files in files.items():
        for f in kind_files:
            table = pq.read_table(f)  # every visible shard is a complete Parquet file of its kind's schema
            validate_table(table, schema_for(kind))
            assert table.num_rows == 1 and table["category"][0].as_py() == f.parent.name
            ids += table["pair_id"].to_pylist()
            assert dict(zip(rows["pair_id"].to_pylist(), rows["_kind"].to_pylist()))[ids[-1]] == kind
    assert Counter(ids) == Counter(rows["pair_id"].to_pylist())  # every row exactly once
    assert sorted(e["path"] for e in sink.written) == sorted(str(f.relative_to(out)) for fs in files.values() for f in fs)


# --- atomic publication ------------------------------------------------------------------------------------

def test_publication_never_overwrites_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "a" / "shard.parquet"
    assert publish_atomically(final, "store", lambda tmp: tmp.write_text("first"))
    assert not publish_atomically(final, "store", lambda tmp: tmp.write_text("second"))
    assert final.read_text() == "first"
    assert publish_atomically(final, "store", lambda tmp: tmp.write_text("third"), replace=True)
    assert final.read_text() == "third"

    def build(tmp):
        tmp.mkdir()
        (tmp / "model.bin").write_text("weights")

    assert publish_atomically(tmp_path / "model", "kit", build)
    assert not publish_atomically(tmp_path / "model", "kit", build)

    def crash(tmp):
        build(tmp)
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        publish_atomically(tmp_path / "other", "kit", crash)
    assert not (tmp_path / "other").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "model", "model.bin", "shard.parquet"]
    stale = tmp_path / f"{TMP_PREFIX}kit-0123-other"
    stale.mkdir()
    (tmp_path / f"{TMP_PREFIX}latents-0123-x").mkdir()
    assert owned_temps(tmp_path, "kit") == [stale]


# --- the lease ---------------------------------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant_lease(out: Path, **fields) -> dict:
    record = {"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time() - 60,
              "heartbeat_at": time.time(), "timeout_s": 300.0, **fields}
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_NAME).write_text(json.dumps(record))
    return record


def test_a_held_lease_refuses_a_second_run_naming_its_holder(tmp_path):
    with OutputLease(tmp_path, "run1", timeout_s=300):
        with pytest.raises(OutputBusy) as busy, OutputLease(tmp_path, "run2", timeout_s=300):
            pass
        message = str(busy.value)
        assert "\n" not in message and "run run1" in message and f"pid {os.getpid()}" in message
        assert f"host {socket.gethostname()}" in message and "since " in message and "last heartbeat" in message
        assert "--break-lease" in message
        assert json.loads((tmp_path / LEASE_NAME).read_text())["run_id"] == "run1"
    assert not (tmp_path / LEASE_NAME).exists()  # released at the end of the run


def test_the_heartbeat_refreshes_the_lease_and_notices_a_takeover(tmp_path):
    with OutputLease(tmp_path, "run1", timeout_s=1.0) as lease:
        first = json.loads((tmp_path / LEASE_NAME).read_text())["heartbeat_at"]
        time.sleep(0.7)
        assert json.loads((tmp_path / LEASE_NAME).read_text())["heartbeat_at"] > first
        with OutputLease(tmp_path, "run2", timeout_s=300, break_lease=True):
            time.sleep(0.7)
            assert lease.lost and "run2" in lease.lost
        assert not (tmp_path / LEASE_NAME).exists()


@pytest.mark.parametrize("holder,break_lease,taken", [
    ({"pid": "dead"}, False, True),                                          # same host, process gone
    ({"host": "elsewhere", "heartbeat_at": time.time() - 400}, False, True),  # heartbeat expired
    ({"host": "elsewhere"}, False, False),                                   # alive as far as we can tell
    ({"host": "elsewhere"}, True, True),                                     # the operator says it is dead
    ({}, False, False),                                                      # this very process: alive
])
def test_a_stale_lease_is_taken_over(tmp_path, caplog, holder, break_lease, taken):
    holder = {**holder, "pid": dead_pid()} if holder.get("pid") == "dead" else holder
    plant_lease(tmp_path, **holder)
    lease = OutputLease(tmp_path, "mine", timeout_s=300, break_lease=break_lease)
    if not taken:
        with pytest.raises(OutputBusy, match="in use by run other"):
            lease.acquire()
        assert json.loads((tmp_path / LEASE_NAME).read_text())["run_id"] == "other"
        return
    with caplog.at_level(logging.WARNING, logger="pairforge"), lease:
        assert json.loads((tmp_path / LEASE_NAME).read_text())["run_id"] == "mine"
    assert "taking over the lease of run other" in caplog.text


def test_a_second_run_on_the_same_output_refuses_while_the_first_completes(tiny_kit, tmp_path):
    cfg = small_run_config(tmp_path, n_prompts=4)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = Path(cfg.output.path)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "pipelines.run", str(config)]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (out / LEASE_NAME).exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took the lease"
            time.sleep(0.05)
        holder = json.loads((out / LEASE_NAME).read_text())
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None  # the second one's refusal came while the first was running
        log = first.communicate(timeout=900)[0]
    finally:
        first.kill()
    assert second.returncode == 3, second.stderr[-2000:]
    refusal = second.stderr.strip().splitlines()[-1]
    assert f"in use by run {holder['run_id']} (host {socket.gethostname()}, pid {first.pid}, since " in refusal
    assert first.returncode == 0, log[-3000:]
    ids = [i for k in ("pairs", "undecided") for f in shard_files(out, k) for i in pq.read_table(f)["pair_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["run_id"] for r in manifest["runs"]] == [holder["run_id"]]
    assert not (out / LEASE_NAME).exists()
