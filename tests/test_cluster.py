"""The cluster side: cluster.yaml against Ray's own cluster-config schema, and `ray job submit` of the
pipeline to a real local head started with `ray start --head`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_runs_the_demo_on_a_local_head(ray_session, tiny_kit, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="pf-ray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    head_log = open(tmp_path / "head.log", "wb")  # noqa: SIM115  (a file, not a pipe: a full pipe stalls the head)
    head = subprocess.Popen(
        # Every port of its own: the test session's local Ray already holds the default agent ports.
        [BIN / "ray", "start", "--head", "--block", f"--port={free_port()}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--ray-client-server-port={free_port()}", "--num-cpus=4", "--include-dashboard=true", f"--temp-dir={temp_dir}"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    out = tmp_path / "out"
    try:
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
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(out, "pairs"))
    rows += sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(out, "undecided"))
    assert rows == 4
    counts = json.loads((out / "manifest.json").read_text())["counts"]["composition"]
    assert counts["pairs"] + counts["undecided"] == 4  # the demo's tiny judges mostly tie
