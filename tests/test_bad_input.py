"""Prompt files that leave a run nothing to do end in one clear line and a non-zero exit, through the
real command line (a subprocess driving the test session's Ray, as a cluster user's driver would), before
any model is loaded."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import write_jsonl

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def config_for(tmp_path: Path, prompts: Path) -> Path:
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    data["prompts"] = [{"path": str(prompts), "source": "bad"}]
    data["categories"] = {"composition": data["categories"]["composition"]}
    data["filters"]["semantic_dedup"] = True  # its embedder must not be loaded for a run with nothing to do
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def raw(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return write


def jsonl(rows: list):
    return lambda path: write_jsonl(path, rows)


CASES = {  # name: (writes the prompt file, what the message says; PATH stands for the file)
    "empty": (raw(b""), "no non-blank lines to read"),
    "blank_lines": (raw(b"\n  \n\t\n\n"), "no non-blank lines to read"),
    "binary": (raw(bytes(b for b in range(256) if b != 10) * 4 + b"\n\x00\xff\xfe\n"),
               "every line was rejected (invalid_utf8 2)"),
    "every_line_rejected": (jsonl(["a line of prose", '{"prompt": "a cat"', {"prompt": "ok"}, {"text": "wrong key"}]),
                            "every line was rejected (malformed_json 2, missing_field 1, too_short 1)"),
    "routes_nowhere": (jsonl([{"prompt": "a meme about cats", "category": "memes"},
                              {"prompt": "a meme about dogs", "category": "memes"}, {"prompt": "a plain photo of a lake"}]),
                       "source 'bad' (PATH): 3 usable, 'category' = memes 2, (none) 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_prompt_file_with_nothing_usable_ends_in_one_clear_line(ray_session, tmp_path, case):
    write, expected = CASES[case]
    prompts = write(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    # Both entry points: `pairforge run` and `python -m pipelines.run` (what `ray job submit` runs).
    cli = [BIN / "pairforge", "run"] if case in ("binary", "empty", "routes_nowhere") else \
        [sys.executable, "-m", "pipelines.run"]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([*cli, config_for(tmp_path, prompts), "--output", out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "KeyError" not in proc.stderr
    assert last.startswith("prompts: ") and str(prompts) in last and expected.replace("PATH", str(prompts)) in last, last
    # Ray logs this when the first actor pool starts (pools hold the models): none did
    assert "arguments in the object store and max_restarts" not in proc.stderr
    if case == "routes_nowhere":
        assert "none of the 3 usable prompts goes to a category of this run (composition)" in last
    elif case in ("binary", "every_line_rejected"):
        assert f"is in {out}/rejects/prompts.parquet" in last
        rejects = pq.read_table(out / "rejects/prompts.parquet").to_pylist()
        assert len(rejects) == (2 if case == "binary" else 4) and all(r["file"].endswith("prompts.jsonl") for r in rejects)


@pytest.mark.parametrize("cli", ["pairforge", "python -m"])
def test_a_cluster_address_where_nothing_answers_ends_in_one_line_and_frees_the_output(tmp_path, cli):
    """`ray.init` retries an unreachable GCS forever (CI 2026-12-04: a driver hung 600 s on a head that was
    not up); the run gives up after `ray.connect_timeout_s` naming the address, and leaves the output free."""
    import socket
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a red bicycle leaning on a wall"}])
        command = [BIN / "pairforge", "run"] if cli == "pairforge" else [sys.executable, "-m", "pipelines.run"]
        out = tmp_path / "out"
        proc = subprocess.run([*command, config_for(tmp_path, prompts), "--output", out, "--set", "ray.connect_timeout_s=2"],
                              cwd=REPO, env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ray: no Ray cluster answers at {address} (from $RAY_ADDRESS) after 2 s"), last
    assert not (out / ".lease.json").exists() and not list(out.glob("pairs/*.parquet"))
