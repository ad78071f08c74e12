"""Text-rendering stage 1 with real fonts and the real RapidOCR models: the correctly spelled image wins
over a one-character-wrong one when the text is legible; otherwise the pair falls through to stage 2."""

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw, ImageFont

from schemas.config import OcrConfig
from workers.ocr import OcrReader, quoted_spans, read_check

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf"]
PHRASES = ["OPEN DAILY", "Fresh Coffee", "Welcome Home", "Happy Birthday Emma", "SALE 50% OFF", "Grand Central",
           "Keep calm", "Mountain Bakery", "STOP", "Beware of the dog", "Library", "Night Market", "Hello World",
           "Summer Festival", "Quiet please", "Best Pizza", "Garden Party", "Welcome Aboard", "Book Club", "SOLD OUT"]


def font(name: str, size: int):
    path = FONT_DIR / name
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size=size)


def render(text: str, font_name: str, size: int = 384) -> bytes:
    img = Image.new("RGB", (size, size), (245, 240, 230))
    draw = ImageDraw.Draw(img)
    f = font(font_name, 44)
    while draw.textlength(text, font=f) > size * 0.9:
        f = font(font_name, f.size - 4)
    draw.text(((size - draw.textlength(text, font=f)) / 2, size / 2 - f.size / 2), text, font=f, fill=(20, 20, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def one_char_wrong(text: str, rng: random.Random) -> str:
    i = rng.choice([i for i, c in enumerate(text) if c.isalpha()])
    c = text[i]
    new = rng.choice([x for x in "abcdefghijklmnopqrstuvwxyz" if x != c.lower()])
    return text[:i] + (new.upper() if c.isupper() else new) + text[i + 1:]


@pytest.fixture(scope="module")
def reader():
    return OcrReader("rapid", OcrConfig().model_dump())


def run_reader(reader, rows):
    """rows: (required spans, image a, image b); returns the OCR results and the judges left per row."""
    batch = pa.table({"ocr_engine": ["rapid"] * len(rows), "required_text": [json.dumps(r[0]) for r in rows],
                      "image_a": pa.array([r[1] for r in rows], pa.binary()),
                      "image_b": pa.array([r[2] for r in rows], pa.binary()), "judges": ["j1,j2"] * len(rows)})
    out = reader(batch)
    return [json.loads(o) for o in out.column("ocr").to_pylist()], out.column("judges").to_pylist()


def stage1_rows():
    """Each phrase rendered right and one letter wrong (the right one on side b every other row); and the flips."""
    rng = random.Random(0)
    rows, swapped = [], []
    for i, phrase in enumerate(PHRASES):
        good, bad = render(phrase, FONTS[i % 4]), render(one_char_wrong(phrase, rng), FONTS[i % 4])
        flip = i % 2 == 1  # the correct image on either side
        rows.append(([phrase], bad, good) if flip else ([phrase], good, bad))
        swapped.append(flip)
    return rows, swapped


def test_stage1_prefers_the_correct_spelling(reader):
    rows, swapped = stage1_rows()
    results, judges = run_reader(reader, rows)
    legible = decided_right = fell_through = 0
    for ocr, left, flip in zip(results, judges, swapped):
        correct, wrong = ("b", "a") if flip else ("a", "b")
        if not ocr[f"exact_{correct}"]:  # OCR could not read even the correct rendering: not legible
            assert left == "j1,j2"  # nothing decided: stage 2
            continue
        legible += 1
        assert ocr[f"ned_{correct}"] == 0.0 and ocr[f"ned_{wrong}"] > 0.0
        if not ocr[f"exact_{wrong}"]:
            decided_right += 1
            assert left == ""  # stage 1 decided: no judge needed
        else:
            fell_through += 1
            assert left == "j1,j2"
    assert legible >= 0.8 * len(PHRASES), results
    assert decided_right >= 0.9 * legible, (decided_right, legible, results)


def test_both_right_or_both_wrong_falls_through_to_stage2(reader):
    both_right = ([PHRASES[0]], render(PHRASES[0], FONTS[0]), render(PHRASES[0], FONTS[1]))
    blank = io.BytesIO()
    Image.new("RGB", (256, 256), "white").save(blank, format="PNG")
    both_wrong = ([PHRASES[1]], blank.getvalue(), blank.getvalue())
    results, judges = run_reader(reader, [both_right, both_wrong])
    assert results[0]["exact_a"] and results[0]["exact_b"] and judges[0] == "j1,j2"
    assert not results[1]["exact_a"] and results[1]["ned_a"] == 1.0 and judges[1] == "j1,j2"


def test_required_text_and_read_checks():
    assert quoted_spans('a neon sign that reads "OPEN LATE" above a door') == ["OPEN LATE"]
    assert quoted_spans('a label "Jam" and a tag “2 for 1”') == ["Jam", "2 for 1"]
    assert quoted_spans("no quotes here") == []
    assert read_check(["Open Late"], "OPENLATE  24h") == (True, 0.0)   # case and spaces do not matter
    exact, ned = read_check(["Open Late"], "OPEN LAIE")
    assert not exact and 0 < ned <= 1 / 8 + 1e-9
    assert read_check(["a", "b"], "a") == (False, 0.5)
    assert read_check(["x"], "") == (False, 1.0)


def test_paddleocr_backend_names_its_extra_when_missing():
    pytest.importorskip("rapidocr")
    try:
        import paddleocr  # noqa: F401
        pytest.skip("paddleocr is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pairforge\[paddleocr\]"):
        OcrReader("p", OcrConfig(backend="paddleocr").model_dump())


def test_corrupt_images_read_as_nothing(reader):
    results, judges = run_reader(reader, [(["STOP"], b"not an image", render("STOP", FONTS[0]))])
    assert results[0]["text_a"] == "" and not results[0]["exact_a"] and np.isclose(results[0]["ned_a"], 1.0)
