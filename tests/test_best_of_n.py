"""Best-of-N on real local Ray: N images per prompt, four reward models, CaPO calibration and Pareto
selection choose the pair; calibrated rewards are stored per image."""

import pyarrow.parquet as pq
from helpers import small_run_config

from pipelines.run import run
from pipelines.store import shard_files


def test_rewards_choose_the_pair_from_n_candidates(ray_session, tmp_path):
    cfg = small_run_config(tmp_path, n_prompts=3, overrides={
        ("categories", "composition", "best_of_n"): 4,
        ("categories", "composition", "panel"): None,
        ("categories", "composition", "rewards"): ["clip", "pickscore", "hpsv2", "aesthetic"],
    })
    report = run(cfg)
    rows = [r for f in shard_files(tmp_path / "out", "pairs") for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 3 and report["categories"]["composition"]["label_sources"] == {"reward": 3}
    for r in rows:
        assert r["votes"] == [] and [x["model"] for x in r["rewards"]] == ["clip", "pickscore", "hpsv2", "aesthetic"]
        cw = [x["calibrated_w"] for x in r["rewards"]]
        cl = [x["calibrated_l"] for x in r["rewards"]]
        assert all(0 <= v <= 1 for v in cw + cl)
        assert not (all(a <= b for a, b in zip(cw, cl)) and any(a < b for a, b in zip(cw, cl)))  # not dominated
        assert r["generator_w"]["name"] in ("sd", "flux") and r["generator_l"]["name"] in ("sd", "flux")
        assert (r["generator_w"]["name"], r["generator_w"]["seed"]) != (r["generator_l"]["name"], r["generator_l"]["seed"])
    consistency = report["categories"]["composition"]["reward_consistency"]
    assert consistency is not None and 0.0 <= consistency <= 1.0
