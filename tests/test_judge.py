"""The VLM judge on a real tiny Qwen2-VL: votes in both orders, scores, abstentions, batching, and prompt injection
rendered through each backend's chat template."""

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from helpers import CONTROL_TOKENS, INJECTIONS
from PIL import Image
from test_rubrics import skeleton

from schemas.config import JudgeConfig
from schemas.work import WORK_COLUMNS
from workers.judge import VLMJudge, vote_from_result
from workers.judge_backends import OptionResult, openai_messages
from workers.media import decode_video, mp4_bytes
from workers.rubrics import data_markers, pairwise_messages, sanitize_untrusted, score_messages
from workers.video_frames import sample_video


def png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def names(value: str) -> list[str]:
    """"j,k" -> the list a work row's `judges` / `score_judges` holds."""
    return value.split(",") if value else []


def batch(n: int, judges="j", image_b=None, score_judges="") -> pa.Table:
    return pa.table({
        "judges": [names(judges)] * n, "score_judges": [names(score_judges)] * n, "category": ["composition"] * n,
        "prompt": [f"two cups on a table, the left one tipped over #{i}" for i in range(n)],
        "image_a": pa.array([png(i) for i in range(n)], pa.binary()),
        "image_b": pa.array(image_b if image_b is not None else [png(100 + i) for i in range(n)], pa.binary()),
    })


@pytest.fixture(scope="module")
def judge(tiny_kit):
    return VLMJudge("j", JudgeConfig(model="tiny:qwen2-vl-a").model_dump(), str(tiny_kit / "qwen2-vl-a"))


def test_two_votes_per_judge_with_option_logprobs(judge):
    out = judge(batch(3))
    assert out.num_rows == 3 and out.column_names[:6] == batch(3).column_names
    for votes in out.column("votes").to_pylist():
        assert [v["order"] for v in votes] == ["AB", "BA"]
        for v in votes:
            assert v["judge"] == "j" and v["choice"] in ("A", "B")
            assert v["logprob_a"] < 0 and v["logprob_b"] < 0
            assert v["choice"] == ("A" if v["logprob_a"] >= v["logprob_b"] else "B")


def test_votes_accumulate_and_other_panels_pass_through(judge):
    first = judge(batch(2))
    second = judge(first)
    assert [len(v) for v in second.column("votes").to_pylist()] == [4, 4]
    other = judge(batch(2, judges="someone,else"))
    assert other.column("votes").to_pylist() == [[], []]


def test_batched_logprobs_equal_one_by_one(judge):
    together = judge(batch(4)).column("votes").to_pylist()
    full = batch(4)
    for i in range(4):
        alone = judge(full.slice(i, 1)).column("votes")[0].as_py()
        for a, b in zip(alone, together[i]):
            assert a["logprob_a"] == pytest.approx(b["logprob_a"], abs=1e-4)
            assert a["logprob_b"] == pytest.approx(b["logprob_b"], abs=1e-4)


def test_swapping_images_swaps_the_orders(judge):
    t = batch(1)
    swapped = t.set_column(4, "image_a", t.column("image_b")).set_column(5, "image_b", t.column("image_a"))
    v = judge(t).column("votes")[0].as_py()
    s = judge(swapped).column("votes")[0].as_py()
    assert v[0]["logprob_a"] == pytest.approx(s[1]["logprob_a"], abs=1e-4)  # AB of one is BA of the other
    assert v[1]["logprob_b"] == pytest.approx(s[0]["logprob_b"], abs=1e-4)


def test_corrupt_image_is_an_abstention_not_a_crash(judge):
    out = judge(batch(2, image_b=[b"\x89PNG\r\n\x1a\nnot really", png(7)]))
    bad, good = out.column("votes").to_pylist()
    assert [v["choice"] for v in bad] == [None, None] and "bad image" in bad[0]["note"]
    assert all(v["choice"] in ("A", "B") for v in good)


def test_rows_without_images_are_skipped(judge):
    out = judge(batch(1, image_b=[None]))
    assert out.column("votes").to_pylist() == [[]]


NAN = float("nan")


@pytest.mark.parametrize("lp,text,mass,choice,note", [
    ((-0.1, -3.0), None, 0.0, "A", None), ((-3.0, -0.1), None, 0.0, "B", None),
    ((-6.0, -6.2), "A", 0.5, None, "option mass"),
    ((NAN, -1.0), None, 0.0, None, "unparseable"), ((NAN, NAN), "", 0.0, None, "unparseable"),
    ((float("-inf"), float("-inf")), "I cannot compare these.", 0.0, None, "unparseable"),
    ((NAN, NAN), "**B**", 0.0, "B", "parsed from text"),
])
def test_unparseable_or_off_topic_answers_abstain(lp, text, mass, choice, note):
    v = vote_from_result("j", "AB", OptionResult(np.array(lp), text), mass)
    assert v["choice"] == choice
    assert (v["note"] or "").startswith(note or "")
    if choice is None:
        assert v["logprob_a"] is None or v["note"].startswith("option mass")


def test_one_actor_votes_and_scores_its_rows(judge):
    t = batch(3).set_column(0, "judges", pa.array([["j"], [], ["j", "k"]]))
    t = t.set_column(1, "score_judges", pa.array([["j"], ["k", "j"], ["other"]]))
    out = judge(t)
    votes = out.column("votes").to_pylist()
    scores = out.column("scores").to_pylist()
    assert [len(v) for v in votes] == [2, 0, 2] and [len(s) for s in scores] == [2, 2, 0]
    for s in scores[0] + scores[1]:
        assert s["judge"] == "j" and s["note"] is None and len(s["probs"]) == 10
        assert sum(s["probs"]) == pytest.approx(1, abs=1e-4) and 0 < s["mass"] <= 1
        assert 1 <= s["expected"] <= 10 and s["std"] > 0
    assert [s["side"] for s in scores[0]] == ["a", "b"]
    assert scores[0][0]["expected"] != scores[0][1]["expected"]  # each image is scored on its own


def test_the_category_decides_whether_its_panel_votes(judge):
    """text_rendering rows whose OCR reads already decide the pair get no panel votes (the category says so,
    `wants_panel`); their score judges still score; rows OCR left open, and other categories, get votes."""
    def reads(exact_a, exact_b):
        return [{"side": s, "text": "", "exact": e, "ned": 0.0 if e else 1.0} for s, e in (("a", exact_a), ("b", exact_b))]

    t = batch(4, score_judges="j").set_column(2, "category", pa.array(["text_rendering"] * 3 + ["composition"]))
    t = t.append_column("ocr", pa.array([reads(True, False), reads(True, True), None, reads(False, True)],
                                        WORK_COLUMNS["ocr"]))
    out = judge(t)
    assert [len(v) for v in out.column("votes").to_pylist()] == [0, 2, 2, 2]
    assert [len(s) for s in out.column("scores").to_pylist()] == [2, 2, 2, 2]


def test_undecodable_image_gets_an_unread_score_with_a_note(judge):
    out = judge(batch(1, judges="", score_judges="j", image_b=[b"not an image"]))
    (a, b), = out.column("scores").to_pylist()
    assert a["expected"] is None and b["expected"] is None and "bad image" in a["note"]


@pytest.fixture(scope="module")
def local(judge):
    return judge.backend


NONCE = "0f1e2d3c4b5a6978"


def endpoint_chat(local, messages) -> str:
    """What an OpenAI-compatible vLLM server renders from our request: the JSON payload's messages (text
    and image_url parts) through the model's own chat template."""
    payload = json.loads(json.dumps(openai_messages(messages, [Image.new("RGB", (8, 8))] * 2)))
    return local.processor.apply_chat_template(payload, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("attack", INJECTIONS)
@pytest.mark.parametrize("backend", ["in-process", "endpoint"])
@pytest.mark.parametrize("messages", [pairwise_messages, score_messages], ids=["pairwise", "score"])
def test_injected_prompt_leaves_the_rendered_chat_structure_unchanged(local, attack, backend, messages):
    """Rendered through the judge's chat template: one data section, the instructions after it intact, and
    the same control-token sequence as a benign prompt (turns, image slots, nothing closed early). The
    endpoint sanitises without the tokenizer, which is not known there."""
    specials = local.special_tokens if backend == "in-process" else []
    render = local.render if backend == "in-process" else (lambda m: endpoint_chat(local, m))
    chats = {name: render(messages("composition", sanitize_untrusted(text, specials, 600), NONCE))
             for name, text in (("benign", "a cat"), ("attack", attack))}
    tok = local.tokenizer
    special_ids = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in local.special_tokens}
    structure = {name: [i for i in tok(chat, add_special_tokens=False).input_ids if i in special_ids]
                 for name, chat in chats.items()}
    assert structure["attack"] == structure["benign"]
    begin, end = data_markers(NONCE)
    assert chats["attack"].count(begin) == chats["attack"].count(end) == 1
    assert chats["attack"].split(begin)[0] == chats["benign"].split(begin)[0]
    assert chats["attack"].split(end)[1] == chats["benign"].split(end)[1]
    data = json.loads(chats["attack"].split(begin)[1].split(end)[0])
    assert "PROMPTDATA" not in skeleton(data) and not any(t in data for t in CONTROL_TOKENS)


def mp4(seed: int, frames: int = 9) -> bytes:
    rng = np.random.default_rng(seed)
    return mp4_bytes(rng.integers(0, 255, (frames, 64, 96, 3), dtype=np.uint8), 8.0)


SMALL_VIDEO = dict(video_min_pixels=28 * 28 * 4, video_max_pixels=28 * 28 * 12, video_total_pixels=28 * 28 * 24)


@pytest.fixture(scope="module")
def video_judge(tiny_kit):
    cfg = JudgeConfig(model="tiny:qwen2-vl-a", **SMALL_VIDEO)
    return VLMJudge("j", cfg.model_dump(), str(tiny_kit / "qwen2-vl-a"))


def video_batch(video_a: list, video_b: list, images: bool = False) -> pa.Table:
    n = len(video_a)
    return pa.table({
        "judges": [["j"]] * n, "score_judges": [["j"]] * n, "category": ["composition"] * n,
        "prompt": [f"a kite rising over a beach #{i}" for i in range(n)],
        "image_a": pa.array([png(i) if images else None for i in range(n)], pa.binary()),
        "image_b": pa.array([png(50 + i) if images else None for i in range(n)], pa.binary()),
        "video_a": pa.array(video_a, pa.binary()), "video_b": pa.array(video_b, pa.binary())})


def test_video_pairs_get_votes_and_scores_like_image_pairs(video_judge):
    """Video rows fill the same columns with the same records; a bad video abstains with the reason; a row with
    images and no videos is still an image pair."""
    out = video_judge(pa.concat_tables([video_batch([mp4(1), mp4(2)], [mp4(3), b"\x00\x00\x00\x18ftypmp42 cut"]),
                                        video_batch([None], [None], images=True)]))
    votes = out.column("votes").to_pylist()
    scores = out.column("scores").to_pylist()
    for row in (0, 2):
        assert [v["order"] for v in votes[row]] == ["AB", "BA"]
        assert all(v["choice"] in ("A", "B") and v["logprob_a"] < 0 and v["logprob_b"] < 0 for v in votes[row])
        assert [s["side"] for s in scores[row]] == ["a", "b"]
        for s in scores[row]:
            assert s["note"] is None and len(s["probs"]) == 10 and sum(s["probs"]) == pytest.approx(1, abs=1e-4)
            assert 1 <= s["expected"] <= 10 and 0 < s["mass"] <= 1
    assert scores[0][0]["expected"] != scores[0][1]["expected"]  # each video is scored on its own
    assert [v["choice"] for v in votes[1]] == [None, None] and votes[1][0]["note"].startswith("bad video: ")
    assert all(s["expected"] is None and s["note"].startswith("bad video: ") for s in scores[1])


def test_swapping_videos_swaps_the_orders(video_judge):
    v = video_judge(video_batch([mp4(4)], [mp4(5)])).column("votes")[0].as_py()
    s = video_judge(video_batch([mp4(5)], [mp4(4)])).column("votes")[0].as_py()
    assert v[0]["logprob_a"] == pytest.approx(s[1]["logprob_a"], abs=1e-4)  # AB of one is BA of the other
    assert v[1]["logprob_b"] == pytest.approx(s[0]["logprob_b"], abs=1e-4)


def test_endpoint_receives_the_sampled_frames_as_an_mp4_video_url():
    """What an OpenAI-compatible server gets: a video_url part per video, an MP4 of exactly the sampled frames
    at the sampled rate."""
    cfg = JudgeConfig(model="m", **SMALL_VIDEO)
    t, y, x = np.mgrid[0:17, 0:64, 0:96]
    waves = [127 + 100 * np.sin(x / 9 + t / 2 + phase) * np.cos(y / 7) for phase in (0, 1, 2)]
    clip = np.stack(waves, -1).astype(np.uint8)  # smooth: what a codec keeps well, unlike noise
    videos = [sample_video(*decode_video(mp4_bytes(c, 8.0)), cfg) for c in (clip, clip[::-1])]
    parts = openai_messages(pairwise_messages("composition", "a kite", NONCE, media="video"), videos)[0]["content"]
    urls = [p["video_url"]["url"] for p in parts if p["type"] == "video_url"]
    assert [p["type"] for p in parts] == ["text", "video_url", "text", "video_url", "text"]
    for url, video in zip(urls, videos):
        assert url.startswith("data:video/mp4;base64,")
        frames, fps = decode_video(base64.b64decode(url.split(",", 1)[1]))
        assert frames.shape == video.frames.shape and fps == pytest.approx(video.sampled_fps, rel=1e-3)
        assert np.abs(frames.astype(int) - video.frames).mean() < 6  # H.264 at CRF 12, 4:2:0: close, not exact
