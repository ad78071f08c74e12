"""OCR readers for text-rendering pairs: RapidOCR (PP-OCR models shipped in its wheel; the embedded
default) and PaddleOCR (clusters; local model folders accepted), and the stage-1 text check."""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np
import pyarrow as pa

from schemas.config import OcrConfig
from schemas.work import work_array
from workers.media import decode_image
from workers.model_refs import resolve_model_ref
from workers.ppocr_kit import declared_model_name, pipeline_kwargs
from workers.runtime import column, setup_worker, with_columns

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


def quoted_spans(prompt: str) -> list[str]:
    """The text a prompt asks to render: its double-quoted spans (straight or curly quotes)."""
    return [a or b for a, b in _QUOTED.findall(prompt) if (a or b).strip()]


_KIND = {"L": "w", "M": "w", "N": "w", "P": "p", "S": "p"}  # Unicode category -> word glyph / punctuation
_TOKEN = re.compile(r"w+(?:p+w+)*|p")


def glyph_tokens(text: str) -> list[str]:
    """Comparison tokens of a text, NFKC-normalised and case-folded: runs of letters, marks and digits,
    joined across punctuation that sits between them ("rock'n'roll", "u.s.a"); punctuation or a symbol at
    a word's edge is a token of its own ("open", "!"). Whitespace and control characters only separate."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    kinds = "".join(_KIND.get(unicodedata.category(c)[0], " ") for c in text)
    return [text[m.start():m.end()] for m in _TOKEN.finditer(kinds)]


def span_match(span: str, tokens: list[str]) -> tuple[int, float]:
    """(edit distance, NED) of the required span to the run of consecutive whole read tokens closest to it,
    both with spaces removed (OCR drops and adds spaces between words). The NED is over that aligned
    run, so glyphs the image adds or drops inside it count; tokens outside it do not."""
    from rapidfuzz.distance import Levenshtein

    want = "".join(glyph_tokens(span))
    if not tokens:
        return len(want), 1.0
    best = (math.inf, 1.0)
    for i in range(len(tokens)):
        run = ""
        for token in tokens[i:]:
            run += token
            if len(run) - len(want) > best[0]:  # this run and every longer one are further away
                break
            d = Levenshtein.distance(want, run)
            best = min(best, (d, d / max(len(want), len(run))))
    return best


def read_check(required: list[str], read: str) -> tuple[bool, float]:
    """(every required span is read exactly, mean NED of the spans to their aligned runs: 0 = perfect,
    1 = nothing alike). Exact means the span's glyphs equal a run of whole read tokens, so "Fresh Breadd"
    and "WHOLESALE" do not read "Fresh Bread" and "SALE"; "FreshBread" does, and other tokens in the
    image ("K Fresh Bread!") do not matter. Punctuation follows `glyph_tokens`: at a word's edge it
    separates like a space ("OPEN!" reads "OPEN"), between letters it joins them ("Bread's" is not
    "Bread"); the span's own punctuation must be read, and an extra glyph inside the span is an error."""
    tokens = glyph_tokens(read)
    matches = [span_match(s, tokens) for s in required if glyph_tokens(s)]
    if not matches:
        return False, 1.0
    return all(d == 0 for d, _ in matches), float(np.mean([ned for _, ned in matches]))


class RapidOcrBackend:
    def __init__(self, cfg: OcrConfig, num_threads: int = 1):
        from rapidocr import RapidOCR

        self.engine = RapidOCR(params={"Global.log_level": "error", "EngineConfig.onnxruntime.intra_op_num_threads": num_threads})

    def read(self, image) -> str:
        result = self.engine(np.asarray(image)[:, :, ::-1].copy())  # BGR, as OpenCV reads images
        if result is None or result.txts is None:
            return ""
        return _reading_order(result.txts, result.boxes)


class PaddleOcrBackend:
    """PaddleOCR's OCR pipeline (detection + recognition; no document unwarping or orientation models)."""

    def __init__(self, cfg: OcrConfig, num_threads: int = 1):
        try:
            from paddleocr import PaddleOCR
        except ImportError as e:
            raise ImportError("the paddleocr OCR backend needs PaddleOCR: pip install 'pairforge[paddleocr]'") from e
        args = {"use_doc_orientation_classify": False, "use_doc_unwarping": False, "use_textline_orientation": False,
                "cpu_threads": num_threads}
        for task, ref in (("detection", cfg.det_model_dir), ("recognition", cfg.rec_model_dir)):
            if ref:
                path = resolve_model_ref(ref)
                # PaddleOCR checks the folder's model name against its default model's unless told the name.
                args[f"text_{task}_model_dir"], args[f"text_{task}_model_name"] = path, declared_model_name(path)
                if ref.startswith("rapidocr:"):
                    args.update(pipeline_kwargs(task))
        if not (cfg.det_model_dir or cfg.rec_model_dir):
            args["lang"] = cfg.lang
        if cfg.device:
            args["device"] = cfg.device
        self.engine = PaddleOCR(**{**args, **cfg.paddleocr_kwargs})

    def read(self, image) -> str:
        texts, boxes = [], []
        for page in self.engine.predict(np.asarray(image)[:, :, ::-1].copy()):
            texts += list(page["rec_texts"])
            boxes += [np.asarray(b) for b in page["rec_polys"]]
        return _reading_order(texts, boxes) if texts else ""


def _reading_order(texts, boxes) -> str:
    """Lines top to bottom (rows of ~20 px), left to right within a row."""
    items = sorted(zip(texts, boxes), key=lambda t: (round(float(np.mean(t[1][:, 1])) / 20), float(np.min(t[1][:, 0]))))
    return " ".join(t for t, _ in items)


OCR_BACKENDS = {"rapidocr": RapidOcrBackend, "paddleocr": PaddleOcrBackend}


class OcrReader:
    """Ray Data actor: for rows whose `ocr_engine` names this reader, reads both images, checks them
    against `required_text` and writes `ocr`, one `OCR_READ` {side, text, exact, ned} per side ("a", "b").
    What the reads decide is the category's (text_rendering: stage 1 of its label)."""

    input_columns = ("ocr_engine", "required_text", "image_a", "image_b")
    output_columns = ("ocr",)

    def __init__(self, name: str, cfg: dict, num_threads: int = 1):
        setup_worker(num_threads)
        self.name = name
        self.cfg = OcrConfig.model_validate(cfg)
        self.backend = OCR_BACKENDS[self.cfg.backend](self.cfg, num_threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        engines, required = column(batch, "ocr_engine"), column(batch, "required_text")
        images = {s: column(batch, f"image_{s}") for s in ("a", "b")}
        ocr = column(batch, "ocr")
        for i in range(batch.num_rows):
            if engines[i] != self.name or images["a"][i] is None or images["b"][i] is None:
                continue
            ocr[i] = []
            for side in ("a", "b"):
                try:
                    text = self.backend.read(decode_image(images[side][i]))
                except ValueError:
                    text = ""
                exact, ned = read_check(required[i] or [], text)
                ocr[i].append({"side": side, "text": text, "exact": exact, "ned": ned})
        return with_columns(batch, ocr=work_array("ocr", ocr))
