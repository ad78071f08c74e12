"""The PaddleOCR backend for real, offline: PaddleOCR loads RapidOCR's shipped PP-OCR models converted once
into the model cache (x2paddle) and reads rendered text as RapidOCR does, through the same OCR interface."""

import io
import json
import socket
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import small_run_config
from PIL import Image
from test_ocr import FONTS, PHRASES, render, run_reader, stage1_rows

from pipelines.run import run
from pipelines.store import shard_files
from schemas.config import OcrConfig
from workers.model_refs import resolve_model_ref
from workers.ocr import OcrReader

pytest.importorskip("paddleocr", reason="PaddleOCR is not installed: pip install 'pairforge[paddleocr,ppocr-kit]'")
pytest.importorskip("x2paddle", reason="x2paddle is not installed: pip install 'pairforge[ppocr-kit]'")

DET, REC = "rapidocr:PP-OCRv6_det_small", "rapidocr:PP-OCRv6_rec_small"
PADDLE = {"backend": "paddleocr", "det_model_dir": DET, "rec_model_dir": REC}


@pytest.fixture(scope="module")
def rapid():
    return OcrReader("rapid", OcrConfig().model_dump())


@pytest.fixture(scope="module")
def paddle():
    """PaddleOCR on the converted models. Loading PaddleOCR and a first read (and the conversion, when the
    cache lacks it) happen with this process's internet connections refused and recorded: nothing may be
    fetched (models, fonts, hub checks). x2paddle's own subprocess runs with its feedback call switched off."""
    attempts = []
    connect = socket.socket.connect

    def refuse(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("tests: no network")
        return connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        reader = OcrReader("rapid", OcrConfig(**PADDLE).model_dump())
        first = reader.backend.read(Image.open(io.BytesIO(render("Night Market", FONTS[0]))))
    assert not attempts, f"PaddleOCR reached for the network: {attempts}"
    assert first == "Night Market"
    return reader


def test_paddleocr_labels_stage1_rows_as_rapidocr_does(rapid, paddle):
    """Same weights, same pre/post-processing: every read of every row (right and one-letter-wrong
    renderings, four fonts) is the same text, so stage 1 decides the same rows the same way."""
    rows, _ = stage1_rows()
    (r_results, r_judges), (p_results, p_judges) = run_reader(rapid, rows), run_reader(paddle, rows)
    legible = sum(r[f"exact_{'b' if i % 2 else 'a'}"] for i, r in enumerate(r_results))
    assert legible >= 0.9 * len(rows), r_results  # the comparison is about real reads, not empty ones
    for phrase, r, p in zip(PHRASES, r_results, p_results):
        assert (p["text_a"], p["text_b"]) == (r["text_a"], r["text_b"]), phrase
    assert p_results == r_results and p_judges == r_judges


def test_converted_models_are_cached_paddlex_folders(paddle):
    import yaml

    det, rec = resolve_model_ref(DET), resolve_model_ref(REC)
    for folder, name in ((det, "PP-OCRv6_small_det"), (rec, "PP-OCRv6_small_rec")):
        files = {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).iterdir())}
        assert set(files) == {"inference.json", "inference.pdiparams", "inference.yml"}
        assert yaml.safe_load((Path(folder) / "inference.yml").read_text())["Global"]["model_name"] == name
        assert resolve_model_ref(DET if folder == det else REC) == folder  # built once: a second resolve reuses it
        assert {p.name: p.stat().st_mtime_ns for p in sorted(Path(folder).iterdir())} == files
    chars = yaml.safe_load((Path(rec) / "inference.yml").read_text())["PostProcess"]["character_dict"]
    assert {"A", "z", "%", "0"} <= set(chars)


def test_nearest_upsampling_rewrite_computes_the_same_detection_map():
    """The Resize -> ConvTranspose rewrite that lets Paddle's oneDNN executor run the detector is exact."""
    import onnx
    import onnxruntime as ort

    from workers.ppocr_kit import _nearest_resize_as_conv_transpose, rapidocr_models

    src = onnx.load(str(rapidocr_models() / "PP-OCRv6_det_small.onnx"))
    rewritten = _nearest_resize_as_conv_transpose(onnx.load(str(rapidocr_models() / "PP-OCRv6_det_small.onnx")))
    assert sum(n.op_type == "Resize" for n in src.graph.node) > 0
    assert not [n for n in rewritten.graph.node if n.op_type == "Resize"]
    x = np.random.default_rng(0).random((1, 3, 96, 160), dtype=np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (src, rewritten)]
    a, b = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in run)
    np.testing.assert_array_equal(a, b)


def test_bad_paddleocr_settings_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"rapidocr:PP-OCRv6_det_small"):  # names what RapidOCR ships
        resolve_model_ref("rapidocr:PP-OCRv9_det_huge")
    with pytest.raises(ValueError, match="settings of the paddleocr backend"):
        OcrConfig(det_model_dir=str(tmp_path))
    with pytest.raises(ValueError, match=f"{tmp_path}: not a PaddleOCR model folder"):
        OcrReader("p", OcrConfig(backend="paddleocr", det_model_dir=str(tmp_path), rec_model_dir=REC).model_dump())


@pytest.fixture(scope="module")
def paddle_run(ray_session, tmp_path_factory):
    """The text-rendering category with the demo config's paddleocr reader (real local Ray, tiny generators)."""
    tmp = tmp_path_factory.mktemp("paddle_run")
    cfg = small_run_config(tmp, n_prompts=3, categories=("text_rendering",),
                           overrides={("categories", "text_rendering", "ocr"): "paddle",
                                      ("categories", "text_rendering", "panel"): "anatomy"})  # one judge: fewer actors
    assert cfg.ocr["paddle"].model_dump(include=set(PADDLE)) == PADDLE
    run(cfg)
    out = Path(cfg.output.path)
    rows = {kind: [r for f in shard_files(out, kind) for r in pq.read_table(f).to_pylist()]
            for kind in ("pairs", "undecided", "errors")}
    return rows, json.loads((out / "manifest.json").read_text())["runs"][-1]


def test_paddleocr_runs_in_the_pipeline_and_labels_as_rapidocr_would(paddle_run, rapid):
    """PaddleOCR's reads reach the records, RapidOCR reads the stored images the same, and each label follows
    stage 1 from those reads. (The tiny generators draw noise, so these reads are what both engines make of
    noise; legible text is compared above.)"""
    rows, manifest = paddle_run
    records = rows["pairs"] + rows["undecided"]
    assert not rows["errors"] and len(records) == 3
    assert manifest["model_paths"][DET] == resolve_model_ref(DET) and "paddlepaddle" in manifest["versions"]
    for r in records:
        reads = {o["side"]: o for o in r["ocr"]}
        assert len(reads) == 2
        for side, o in reads.items():
            image = Image.open(io.BytesIO(r[f"image_{side}"]["bytes"]))
            assert o["text"] == rapid.backend.read(image), (r["pair_id"], side)
        decided_by_ocr = reads.get("w", reads.get("a"))["exact"] != reads.get("l", reads.get("b"))["exact"]
        assert (r.get("label_source") == "ocr") == decided_by_ocr
        if decided_by_ocr:
            assert reads["w"]["exact"] and not reads["l"]["exact"]
