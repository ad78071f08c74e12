"""The cluster side: cluster.yaml against Ray's own cluster-config schema, and `ray job submit` of the
pipeline to a real local head started with `ray start --head`."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from pipelines.store import shard_files
from schemas.config import load_run_config, load_train_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_cluster_yaml_matches_the_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((REPO / "cluster.yaml").read_text()), schema)


def test_cluster_configs_only_ask_for_resources_the_cluster_has():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    offered = {r for node in cluster["available_node_types"].values() for r in node["resources"]}
    run = load_run_config(REPO / "configs/cluster_run.yaml")
    pools = [g.pool for g in run.generators.values()] + [j.pool for j in run.judges.values()] + \
        [r.pool for r in run.rewards.values()]
    asked = {r for p in pools for r in p.resources}
    asked |= set(load_train_config(REPO / "configs/cluster_train.yaml").resources_per_worker)
    assert asked and asked <= offered | {"CPU", "GPU"}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this session: a node gets five or six at once, and the
    OS may give the same just-released port twice, which fails the node's start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def cluster_env() -> dict:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    return env


def start_node(args: list[str], env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`ray start --block` in its own session (its process group is the node), with a temp dir of its own
    (Ray's socket paths must stay under 107 bytes) and every agent port of its own: the test session's
    local Ray already holds the default ones. Returns the process and its temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="pf-ray-", dir="/tmp")
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe stalls the node
        node = subprocess.Popen(
            [BIN / "ray", "start", "--block", *args, f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--temp-dir={temp_dir}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return node, temp_dir


def wait_started(node: subprocess.Popen, log_path: Path, timeout_s: float = 240) -> None:
    """Until `ray start --block` says the node is up. A driver started before its head is up waits in
    `ray.init` (CI, 2026-12-04: a driver hung there for the test's whole 600 s); a node that exits or never
    comes up fails the test here, with its log."""
    deadline = time.time() + timeout_s
    while "Ray runtime started" not in log_path.read_text(errors="replace"):
        if node.poll() is not None or time.time() > deadline:
            why = f"exited {node.returncode}" if node.poll() is not None else "timed out"
            pytest.fail(f"ray start did not come up ({why}):\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)


def stop_node(node: subprocess.Popen, temp_dir: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGTERM)
    node.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_runs_the_demo_on_a_local_head(ray_session, tiny_kit, tmp_path):
    env = cluster_env()
    dashboard = free_port()
    head, temp_dir = start_node(["--head", f"--port={free_port()}", f"--dashboard-port={dashboard}",
                                 f"--ray-client-server-port={free_port()}", "--num-cpus=4", "--include-dashboard=true"],
                                env, tmp_path / "head.log")
    out = tmp_path / "out"
    try:
        wait_started(head, tmp_path / "head.log")
        runtime_env = {"env_vars": {"PAIRFORGE_CACHE": os.environ["PAIRFORGE_CACHE"], "HF_HUB_OFFLINE": "1"}}
        cmd = [BIN / "ray", "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--",
               "python", "-m", "pipelines.run", "configs/demo.yaml", "--output", str(out),
               "--set", "categories={composition: {target_pairs: 4, generators: [sd, flux], panel: main}}"]
        deadline = time.time() + 300
        while True:  # the job server takes a few seconds to come up after `ray start`
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            job = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
            submitted = "submitted successfully" in job.stdout + job.stderr
            if job.returncode == 0 or submitted or time.time() > deadline:
                break
            time.sleep(3)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
    finally:
        stop_node(head, temp_dir)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(out, "pairs"))
    rows += sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(out, "undecided"))
    assert rows == 4
    counts = json.loads((out / "manifest.json").read_text())["counts"]["composition"]
    assert counts["pairs"] + counts["undecided"] == 4  # the demo's tiny judges mostly tie



def kill_node(node: subprocess.Popen, marker: str) -> list[int]:
    """SIGKILL a node as a lost machine would go: its `ray start`, raylet, agents and workers, and only
    those: its process group, and every process whose environment carries the node's marker (workers
    rename themselves, `ray::...`, so their command lines do not say which node they belong to)."""
    os.killpg(node.pid, signal.SIGKILL)
    killed = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and f"PF_TEST_NODE={marker}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    node.wait(timeout=60)
    return killed


def lost_node_config(tmp_path: Path, watchdog_s: int) -> Path:
    """Composition on 12 prompts; flux's pool needs `node_b`, which only the second node has. The node is
    killed when the first shard appears, so flux must still have rows to draw then: it is the slow stage by
    a wide margin (240 steps, ~2 s a row here) against the judge's start-up (5-10 s on a loaded box). At 60
    steps a slow judge start let flux finish every row first, and the run completed (CI, 2026-11-24)."""
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    prompts = [json.loads(line) for line in (REPO / "prompts/pairforge-v1.jsonl").read_text().splitlines()]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in [p for p in prompts if p["category"] == "composition"][:12]))
    data.update(prompts=[{"path": str(path), "source": "test"}], output={"path": str(tmp_path / "out"), "rows_per_file": 2},
                run={"watchdog_s": watchdog_s, "progress_s": 5})
    data["filters"]["semantic_dedup"] = False
    data["generators"]["sd"].update(batch_size=2)
    data["generators"]["flux"].update(batch_size=2, steps=240, pool={"num_cpus": 0.25, "resources": {"node_b": 1}})
    data["judges"]["qwen2-vl-a"]["batch_size"] = 2
    data["categories"] = {"composition": {**data["categories"]["composition"], "target_pairs": None, "panel": "anatomy",
                                          "rewards": []}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


@pytest.mark.slow
def test_a_lost_worker_node_halts_the_run_naming_the_pool_and_a_rerun_completes(tiny_kit, tmp_path):
    env = cluster_env()
    port = free_port()
    head, head_dir = start_node(["--head", f"--port={port}", f"--ray-client-server-port={free_port()}", "--num-cpus=3",
                                 "--include-dashboard=false"], env, tmp_path / "head.log")
    nodes = [(head, head_dir)]

    def worker_node(name: str):
        marker = f"{name}-{uuid.uuid4().hex}"
        node = start_node([f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node_b": 1}'],
                          {**env, "PF_TEST_NODE": marker}, tmp_path / f"{name}.log")
        nodes.append(node)
        wait_started(node[0], tmp_path / f"{name}.log")
        return node[0], marker

    config, out = lost_node_config(tmp_path, watchdog_s=25), tmp_path / "out"
    driver = [sys.executable, "-m", "pipelines.run", str(config)]  # as a user on the head runs it
    driver_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    try:
        wait_started(head, tmp_path / "head.log")
        node_b, marker = worker_node("node-b")
        lost = {}

        def kill_mid_run():
            deadline = time.time() + 600
            while not shard_files(out, "pairs") + shard_files(out, "undecided") and time.time() < deadline:
                time.sleep(0.1)
            lost["rows_written"] = sum(pq.ParquetFile(f).metadata.num_rows
                                       for f in shard_files(out, "pairs") + shard_files(out, "undecided"))
            lost["pids"] = kill_node(node_b, marker)

        killer = threading.Thread(target=kill_mid_run, daemon=True)
        killer.start()
        first = subprocess.run(driver, env=driver_env, cwd=REPO, capture_output=True, text=True, timeout=600)
        killer.join(timeout=60)
        assert lost.get("pids") and lost["rows_written"] < 12, lost
        message = first.stderr.strip().splitlines()[-1]
        assert first.returncode == 1, ("the run completed: flux had drawn every row before its node was lost "
                                       "(make flux slower)\n" if first.returncode == 0 else "") + first.stderr[-3000:]
        assert message.startswith("run halted: no pool made progress for ") and "generator:flux" in message, message
        assert "node that is now dead" in message, message

        worker_node("node-b2")  # the replacement node (what the autoscaler brings), then the same command again
        second = subprocess.run(driver, env=driver_env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        for node, temp_dir in nodes:
            if node.poll() is None:
                stop_node(node, temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
    ids = [r for k in ("pairs", "undecided") for f in shard_files(out, k)
           for r in pq.read_table(f, columns=["pair_id"]).column("pair_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 12 and not shard_files(out, "errors")
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no partial shard left behind
