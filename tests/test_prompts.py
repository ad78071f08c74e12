"""Prompt sources: normalisation, rejects with file and line, dedup, routing (real Ray Data)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import small_run_config, write_jsonl

from pipelines.prompts import normalize_text, plan_prompts


def plan(tmp_path, sources, categories=None, **filters):
    filters = {"semantic_dedup": False, **filters}  # the embedder actor only where a test is about it
    cfg = small_run_config(tmp_path)
    cfg = cfg.model_copy(update={"prompts": [cfg.prompts[0].model_copy(update=s) for s in sources],
                                 "filters": cfg.filters.model_copy(update=filters)})
    for name, update in (categories or {}).items():
        cfg.categories[name] = cfg.categories[name].model_copy(update=update)
    kept, rejects = plan_prompts(cfg)
    return kept.take_all(), rejects.take_all()


def test_bad_lines_are_rejected_with_file_line_and_reason(ray_session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "a red cube on a blue ball", "category": "composition"},        # 1 kept
        '{"prompt": "unterminated',                                                  # 2 malformed
        {"text": "wrong field"},                                                     # 3 missing field
        {"prompt": 42},                                                              # 4 not text
        b"\xff\xfe invalid utf-8",                                                  # 5
        {"prompt": "   "},                                                           # 6 empty
        "",                                                                          # 7 blank: skipped
        {"prompt": "x" * 5000},                                                      # 8 too long
        {"prompt": "ok"},                                                            # 9 too short
        '["a list"]',                                                                # 10 not an object
        {"prompt": "A  red cube on a BLUE ball", "category": "composition"},       # 11 duplicate of 1
        {"prompt": "three apples in a row", "category": "memes"},                  # 12 kept, unrouted
    ])
    kept, rejects = plan(tmp_path, [{"path": str(path), "source": "t"}], max_chars=1000, min_chars=3)
    by_line = {r["line"]: r["reject_reason"] for r in rejects}
    assert by_line[2].startswith("malformed_json")
    assert by_line[3] == "missing_field: 'prompt'"
    assert by_line[4] == "not_text: 'prompt' is int"
    assert by_line[5].startswith("invalid_utf8")
    assert by_line[6] == "empty"
    assert by_line[8].startswith("too_long")
    assert by_line[9].startswith("too_short")
    assert by_line[10].startswith("malformed_json: expected an object")
    assert by_line[11].startswith("duplicate_of: ")
    assert 7 not in by_line and all(r["file"].endswith("p.jsonl") for r in rejects)
    assert sorted(r["line"] for r in kept) == [1, 12]
    assert {r["line"]: r["category"] for r in kept} == {1: "composition", 12: None}
    assert len(kept) + len(rejects) == 11  # every non-blank line is accounted for


def test_duplicates_across_sources_keep_the_first_source(ray_session, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a fox in the snow", "category": "composition"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "A fox in the snow", "category": "composition"},
                                          {"prompt": "a hare in the snow", "category": "composition"}])
    kept, rejects = plan(tmp_path, [{"path": str(a), "source": "first"}, {"path": str(b), "source": "second"}])
    assert {(r["prompt_source"], r["prompt"]) for r in kept} == {("first", "a fox in the snow"),
                                                                 ("second", "a hare in the snow")}
    assert len(rejects) == 1 and rejects[0]["prompt_source"] == "second"


def test_text_and_parquet_sources(ray_session, tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a lighthouse at dusk\n\nfour boats in a harbour\n")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": ["a kite over a beach"], "cat": ["composition"]}), parquet)
    kept, _ = plan(tmp_path, [{"path": str(txt), "source": "txt", "category_field": None},
                              {"path": str(parquet), "source": "pq", "text_field": "caption", "category_field": "cat"}])
    assert sorted(r["prompt"] for r in kept) == ["a kite over a beach", "a lighthouse at dusk", "four boats in a harbour"]
    assert {r["prompt"]: r["category"] for r in kept}["a kite over a beach"] == "composition"


def test_prompt_ids_are_stable_and_source_scoped(ray_session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a  boat\tat sea"}])
    k1, _ = plan(tmp_path, [{"path": str(path), "source": "s1"}])
    k2, _ = plan(tmp_path, [{"path": str(path), "source": "s1"}])
    k3, _ = plan(tmp_path, [{"path": str(path), "source": "s2"}])
    assert k1[0]["prompt"] == "a boat at sea" == normalize_text("a  boat\tat sea")
    assert k1[0]["prompt_id"] == k2[0]["prompt_id"] != k3[0]["prompt_id"]


def test_unknown_format_is_a_clear_error(ray_session, tmp_path):
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        plan(tmp_path, [{"path": str(tmp_path / "p.csv")}])


def test_semantic_dedup_collapses_paraphrases_and_keeps_distinct_prompts(ray_session, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "three red apples in a row on a wooden table"},
        {"prompt": "Three red apples lined up in a row on a wooden table"},     # paraphrase of line 1
        {"prompt": "a lighthouse on a rocky cliff at dusk"},
        {"prompt": "A lighthouse standing on a rocky cliff at dusk"},           # paraphrase of line 3
        {"prompt": "a dog chasing a red ball across a park"},
        {"prompt": "two cups of coffee on a marble counter"},
        {"prompt": "three green apples in a row on a wooden table"},             # similar words, other colour
    ])
    # dedup runs when some prompt goes to a category of the run (else the run has nothing to do): route them all
    kept, rejects = plan(tmp_path, [{"path": str(path), "source": "t", "category_field": None}], semantic_dedup=True,
                         categories={"composition": {"sources": ["t"]}})
    near = {r["line"]: r["reject_reason"] for r in rejects}
    assert set(near) == {2, 4} and all(v.startswith("near_duplicate_of: ") for v in near.values())
    assert sorted(r["line"] for r in kept) == [1, 3, 5, 6, 7]


def test_blocklist_rejects_whole_words_only(ray_session, tmp_path):
    block = tmp_path / "block.txt"
    block.write_text("# one term per line\nskull\n")
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a GORE-tex jacket on a hook"}, {"prompt": "a bloody gore scene"},
                                              {"prompt": "a crystal Skull on a shelf"}, {"prompt": "a goreme balloon"}])
    kept, rejects = plan(tmp_path, [{"path": str(path), "source": "t"}], blocklist=["gore"],
                         blocklist_file=str(block))
    assert {r["line"]: r["reject_reason"] for r in rejects} == {2: "blocked: gore", 3: "blocked: skull", 1: "blocked: gore"}
    assert [r["line"] for r in kept] == [4]
