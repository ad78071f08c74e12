"""Best-of-N on real local Ray: N images per prompt, four reward models, CaPO calibration and Pareto
selection choose the pair; calibrated rewards are stored per image."""

import pyarrow.parquet as pq
import pytest
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
        cands = r["candidates"]
        assert len(cands) == 4 and sorted(c["role"] or "-" for c in cands) == ["-", "-", "l", "w"]
        for c in cands:
            assert [x["model"] for x in c["rewards"]] == ["clip", "pickscore", "hpsv2", "aesthetic"]
        for k in range(4):  # pairwise win probabilities sum to 1, so N calibrated rewards sum to N / 2
            assert sum(c["rewards"][k]["calibrated"] for c in cands) == pytest.approx(2.0)
        w = next(c for c in cands if c["role"] == "w")
        lo = next(c for c in cands if c["role"] == "l")
        assert (w["generator"], w["seed"]) == (r["generator_w"]["name"], r["generator_w"]["seed"])
        assert (lo["generator"], lo["seed"]) == (r["generator_l"]["name"], r["generator_l"]["seed"])
        assert [x["calibrated"] for x in w["rewards"]] == cw and [x["calibrated"] for x in lo["rewards"]] == cl
        assert w["front"] == 0 and lo["front"] == max(c["front"] for c in cands)
        assert r["reward_consistent"] == all(x["score_w"] > x["score_l"] for x in r["rewards"])
    consistency = report["categories"]["composition"]["reward_consistency"]
    assert consistency == pytest.approx(sum(r["reward_consistent"] for r in rows) / len(rows), abs=1e-4)
