"""Alignment pairs: the lexicon perturber changes exactly the drawn number of dimensions, with the stated
frequencies, and both sides of a pair use the same generator and seed."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, small_run_config

from pipelines.categories.alignment import Alignment
from pipelines.perturb import DIMENSIONS, changed_dimensions, dimension_terms, draw_num_dimensions, perturb_lexicon

PROMPTS = [json.loads(line)["prompt"] for line in (REPO / "prompts/pairforge-v1.jsonl").read_text().splitlines()]


def test_vocabularies_are_disjoint_so_edits_can_be_read_back():
    seen = {}
    for dim, (terms, _) in DIMENSIONS.items():
        for t in terms:
            assert t.lower() not in seen, f"{t!r} in {dim} and {seen.get(t.lower())}"
            seen[t.lower()] = dim
    for dim, (terms, template) in DIMENSIONS.items():
        for t in terms:  # no term contains another dimension's term ("city skyline" would hold "city")
            assert {d for d, c in dimension_terms(t).items() if c} == {dim}, t
        if template:  # an appended phrase touches only its own dimension
            phrase = template.format(terms[0])
            assert {d for d, c in dimension_terms(phrase).items() if c} == {dim}, phrase


def test_exactly_k_dimensions_change_with_the_stated_frequencies():
    rng = np.random.default_rng(0)
    counts = {1: 0, 2: 0, 3: 0}
    n = 3000
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        k = draw_num_dimensions(rng, [0.7, 0.2, 0.1])
        edited, dims = perturb_lexicon(prompt, k, rng)
        assert len(dims) == len(set(dims)) == k and edited != prompt
        assert changed_dimensions(prompt, edited) == set(dims), (prompt, edited, dims)
        counts[k] += 1
    for k, p in {1: 0.7, 2: 0.2, 3: 0.1}.items():
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(counts[k] - n * p) < 4 * sigma, counts


def test_subject_attributes_are_only_changed_when_present():
    rng = np.random.default_rng(1)
    for _ in range(200):
        _, dims = perturb_lexicon("a lighthouse on a cliff", 3, rng)
        assert not {"quantity", "size", "pose", "action", "interaction", "emotion", "clothing", "age"} & set(dims)
    edited, dims = perturb_lexicon("two smiling children", 1, np.random.default_rng(3))
    assert dims[0] in {"quantity", "emotion"} and edited != "two smiling children"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_edits_are_deterministic_per_seed(k):
    a = perturb_lexicon(PROMPTS[5], k, np.random.default_rng(42))
    b = perturb_lexicon(PROMPTS[5], k, np.random.default_rng(42))
    assert a == b


def test_alignment_plan_uses_one_generator_and_seed_for_both_sides(tmp_path: Path):
    cfg = small_run_config(tmp_path, overrides={("categories",): {
        "alignment": {"generators": ["sd"], "perturber": "lexicon"}}})
    batch = {"prompt": np.array(PROMPTS[:20], dtype=object), "prompt_id": np.array([f"p{i}" for i in range(20)], dtype=object),
             "prompt_source": np.array(["t"] * 20, dtype=object)}
    rows = Alignment().plan(batch, cfg).to_pylist()
    for r in rows:
        assert r["gen_a"] == r["gen_b"] == "sd" and r["seed_a"] == r["seed_b"]
        assert r["prompt_a"] == r["prompt"] != r["prompt_b"] and r["judges"] == []
        dims = r["edit_dimensions"]
        assert len(dims) == r["edit_k"] and changed_dimensions(r["prompt_a"], r["prompt_b"]) == set(dims)
    assert len({r["pair_id"] for r in rows}) == 20
    assert rows == Alignment().plan(batch, cfg).to_pylist()  # planning is deterministic: a re-run skips done ids
