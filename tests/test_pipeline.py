"""End to end on real local Ray with the tiny models: composition pairs, shards, manifest, resume."""

import io
import json
import logging
import shutil
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from helpers import small_run_config
from PIL import Image

from pipelines.lease import LEASE_NAME
from pipelines.prompts import plan_prompts
from pipelines.run import plan, run
from pipelines.stats import compute_stats
from pipelines.store import RESUME_KINDS, TMP_PREFIX, OutputStore, sha256_file, shard_files
from schemas.pair import pair_schema, undecided_schema, validate_table


def all_rows(out, kind):
    files = shard_files(out, kind)
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def done_ids(out):
    return {i for k in RESUME_KINDS for f in shard_files(out, k)
            for i in pq.read_table(f, columns=["pair_id"])["pair_id"].to_pylist()}


def snapshot(out):
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, sha256_file(p))
            for kind in ("pairs", "undecided", "errors") for p in shard_files(out, kind)}


def test_every_prompt_becomes_a_labelled_pair(composition_run):
    cfg, out, report = composition_run
    pairs, undecided = all_rows(out, "pairs"), all_rows(out, "undecided")
    assert len(pairs) + len(undecided) == 8 and not shard_files(out, "errors")
    assert report["categories"]["composition"]["pairs"] == len(pairs) > 0
    judges = cfg.panels["main"].judges
    for row in pairs:
        assert row["category"] == "composition" and row["label_source"] == "vlm_panel"
        assert sorted((v["judge"], v["order"]) for v in row["votes"]) == sorted((j, o) for j in judges for o in ("AB", "BA"))
        assert 0.5 <= row["agreement"] <= 1.0 and 0.5 <= row["confidence"] <= 1.0
        assert {row["generator_w"]["name"], row["generator_l"]["name"]} == {"sd", "flux"}
        assert row["generator_w"]["seed"] == row["generator_l"]["seed"]
        assert [r["model"] for r in row["rewards"]] == cfg.categories["composition"].rewards
        assert row["reward_consistent"] == all(r["score_w"] > r["score_l"] for r in row["rewards"])
        assert row["candidates"] is None  # not best-of-N
        for side in ("image_w", "image_l"):
            assert Image.open(io.BytesIO(row[side]["bytes"])).size == (row["width"], row["height"]) == (64, 64)
    assert len({r["pair_id"] for r in pairs + undecided}) == 8


def test_shards_validate_against_the_schema_and_are_bounded(composition_run):
    cfg, out, _ = composition_run
    for kind, schema in (("pairs", pair_schema()), ("undecided", undecided_schema())):
        for f in shard_files(out, kind):
            table = pq.read_table(f)
            validate_table(table, schema)
            assert table.num_rows <= cfg.output.rows_per_file


def test_manifest_lists_every_shard_with_its_checksum(composition_run):
    cfg, out, _ = composition_run
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {str(p.relative_to(out)) for k in ("pairs", "undecided") for p in shard_files(out, k)}
    assert {f["path"] for f in manifest["files"]} == on_disk
    for f in manifest["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]
        assert pq.ParquetFile(out / f["path"]).metadata.num_rows == f["rows"]
    run_entry = manifest["runs"][-1]
    assert run_entry["config"]["name"] == cfg.name and run_entry["config_hash"] == cfg.config_hash()
    assert {"ray", "torch", "diffusers", "transformers"} <= set(run_entry["versions"])
    counts = manifest["counts"]["composition"]
    assert counts["pairs"] + counts["undecided"] == 8


def test_huggingface_datasets_decodes_the_images(composition_run):
    import datasets

    _, out, _ = composition_run
    ds = datasets.load_dataset("parquet", data_files=str(out / "pairs/composition/*.parquet"), split="train")
    row = ds[0]
    assert isinstance(row["image_w"], Image.Image) and row["image_w"].size == (64, 64)
    assert len(row["votes"]) == 6


def test_rerun_adds_nothing_and_rewrites_nothing(composition_run):
    cfg, out, report = composition_run
    before = snapshot(out)
    again = run(cfg)
    assert snapshot(out) == before
    assert again["categories"] == report["categories"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["planned"] == {"composition": 0} and manifest["runs"][-1]["written"] == {}
    # Every run of one output shows the judges the same data markers.
    assert {r["marker_nonce"] for r in manifest["runs"]} == {(out / "marker_nonce").read_text()}


def test_killed_run_resumes_without_duplicates(composition_run, tmp_path):
    cfg, out, _ = composition_run
    crashed = tmp_path / "out"
    shutil.copytree(out, crashed)
    shards = shard_files(crashed, "pairs")
    lost = shards[0]
    lost_ids = set(pq.read_table(lost, columns=["pair_id"]).column("pair_id").to_pylist())
    lost.unlink()  # as if the run died before this shard was renamed into place ...
    partial = lost.with_name(TMP_PREFIX + "dead-" + lost.name)
    partial.write_bytes(b"PAR1 half a parquet file")  # ... leaving its temporary file behind
    kept = {p: sha256_file(p) for k in ("pairs", "undecided") for p in shard_files(crashed, k)}
    assert done_ids(crashed).isdisjoint(lost_ids)

    run(cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": str(crashed)})}))
    assert not partial.exists()
    assert all(p.exists() and sha256_file(p) == h for p, h in kept.items())  # written shards untouched
    ids = [r["pair_id"] for k in ("pairs", "undecided") for r in all_rows(crashed, k)]
    assert len(ids) == len(set(ids)) == 8 and lost_ids <= set(ids)


def moved(cfg, out, **category):
    """`cfg` writing to `out`, with `category` settings of composition changed."""
    composition = cfg.categories["composition"].model_copy(update=category)
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": str(out)}),
                                  "categories": {"composition": composition}})


def test_resume_plans_the_missing_pairs_up_to_the_target(composition_run, tmp_path):
    cfg, out, _ = composition_run
    crashed = tmp_path / "out"
    shutil.copytree(out, crashed)
    lost = shard_files(crashed, "pairs")[0]
    lost_ids = set(pq.read_table(lost, columns=["pair_id"])["pair_id"].to_pylist())
    lost.unlink()
    decided = sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(crashed, "pairs"))
    store = OutputStore(crashed)
    kept = plan_prompts(cfg)[0].materialize()

    def planned_ids(target):
        branches, planned = plan(moved(cfg, crashed, target_pairs=target), kept, store)
        ids = [i for b in branches for i in b.select_columns(["pair_id"]).to_pandas()["pair_id"]]
        assert planned == {"composition": len(ids)}
        return ids

    assert sorted(planned_ids(None)) == sorted(lost_ids)  # exactly what no shard holds
    one = planned_ids(decided + 1)  # remaining = target - decided so far
    assert len(one) == 1 and set(one) <= lost_ids
    assert planned_ids(decided) == []


def test_other_writers_temporaries_survive_a_run_and_a_dead_runs_lease_is_taken_over(composition_run, tmp_path, caplog):
    cfg, out, _ = composition_run
    again = tmp_path / "out"
    shutil.copytree(out, again)
    latents = again / "latents" / f"{TMP_PREFIX}latents-0123abcd-5678-0123abcd"  # a killed latent-cache build
    latents.mkdir(parents=True)
    (latents / "part-0.parquet").write_bytes(b"half")
    foreign = [again / ".DS_Store", again / f"{TMP_PREFIX}someone-else", again / "pairs" / "composition" / ".nfs0001",
               again / "notes" / f"{TMP_PREFIX}draft"]
    for f in foreign:
        f.parent.mkdir(exist_ok=True)
        f.write_text("not the store's")
    own = [again / "pairs" / "composition" / f"{TMP_PREFIX}store-dead-part-x.parquet",
           again / "rejects" / f"{TMP_PREFIX}store-dead-prompts.parquet", again / f"{TMP_PREFIX}store-dead-manifest.json"]
    for f in own:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"PAR1 half a file")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (again / LEASE_NAME).write_text(json.dumps({
        "run_id": "crashed", "host": socket.gethostname(), "pid": dead.pid, "started_at": time.time() - 60,
        "heartbeat_at": time.time() - 5, "timeout_s": 300.0}))

    with caplog.at_level(logging.WARNING, logger="pairforge"):
        report = run(moved(cfg, again))
    assert "taking over the lease of run crashed" in caplog.text and f"process {dead.pid} no longer exists" in caplog.text
    assert report["categories"]["composition"]["pairs"] > 0
    assert all(f.read_text() == "not the store's" for f in foreign) and (latents / "part-0.parquet").exists()
    assert not any(f.exists() for f in own)
    assert not (again / LEASE_NAME).exists()


def test_rows_that_cannot_be_generated_are_kept_aside_and_retried(ray_session, tmp_path):
    # FLUX rejects max_sequence_length > 512: a real generator failure on every row.
    cfg = small_run_config(tmp_path, n_prompts=3, **{"generators.flux.call_kwargs": {"max_sequence_length": 1024}})
    report = run(cfg)
    out = tmp_path / "out"
    errors = all_rows(out, "errors")
    assert len(errors) == 3 and all("max_sequence_length" in e["error"] for e in errors)
    assert report["categories"]["composition"]["errors"] == 3 and not shard_files(out, "pairs")
    assert done_ids(out) == set()  # failed rows are not done: the next run retries them


def test_stats_count_votes_abstentions_and_position_bias(composition_run):
    _, out, report = composition_run
    c = report["categories"]["composition"]
    assert c["votes"] == 8 * 6 and c["abstentions"] == 0
    assert c["judge_verdicts"] == 8 * 3 and 0 <= c["position_flips"] <= 24
    assert c["position_bias_rate"] == pytest.approx(c["position_flips"] / 24, abs=1e-4)
    assert compute_stats(out) == json.loads((out / "stats.json").read_text())


def test_each_pool_accounts_its_busy_seconds_per_pair(composition_run, ray_session):
    cfg, out, report = composition_run
    run_ = json.loads((out / "manifest.json").read_text())["runs"][0]
    cost, timing = run_["cost"], run_["timing"]
    pools = {"generator:sd", "generator:flux", *(f"judge:{j}" for j in cfg.panels["main"].judges),
             *(f"reward:{r}" for r in cfg.categories["composition"].rewards)}
    assert set(cost["stages"]) == set(cost["busy_by_category"]) == pools and cost["pairs"] == {"composition": 8}
    # Ray's own record of the pools' tasks, an independent clock: the busy seconds a pool reports are the time
    # inside its tasks, so no more than the tasks' durations, and most of them (the rest is Ray's block handling).
    from ray.util.state import list_tasks

    tasks = list_tasks(address=ray_session.get_runtime_context().gcs_address, detail=True, limit=10000,
                       filters=[("state", "=", "FINISHED")], raise_on_missing_output=False)
    for stage, st in cost["stages"].items():
        assert st["rows"] == 8 and st["actors"] == 1 and st["gpu_s"] == 0 and st["busy_s"] > 0, (stage, st)
        # one actor works one batch at a time: its busy seconds fit in the time it was up, which fits in the run
        assert 0 < st["utilisation"] <= 1.0 and st["busy_s"] <= timing["pools_s"], (stage, st)
        assert cost["busy_by_category"][stage]["composition"] == pytest.approx(st["busy_s"], abs=0.01)
        assert cost["s_per_pair"]["composition"][stage] == pytest.approx(st["busy_s"] / 8, abs=0.001)
        spans = [(t.end_time_ms - t.start_time_ms) / 1000 for t in tasks
                 if t.name == f"MapWorker(MapBatches({stage})).submit" and t.start_time_ms and t.end_time_ms
                 and run_["started_at"] <= t.start_time_ms / 1000 <= run_["finished_at"]]  # this run's, not others
        assert spans and st["busy_s"] <= sum(spans) + 0.05, (stage, st, spans)
        assert st["busy_s"] >= 0.5 * sum(spans) - 0.5, (stage, st, spans)
    assert cost["bottleneck"] == max(cost["stages"], key=lambda s: cost["stages"][s]["utilisation"])
    # stats: the same figures, over every run of the output
    assert report["cost"]["s_per_pair"]["composition"] == pytest.approx(cost["s_per_pair"]["composition"], abs=2e-4)
    assert report["cost"]["bottleneck_last_run"] == cost["bottleneck"]
