"""The rater web app (FastAPI, Jinja2 templates with autoescape).

Routes, all under the rater's secret token:
    GET  /r/{token}                       -> 303 to the first pair the rater has not answered (resume)
    GET  /r/{token}/{n}                   the n-th pair of the rater's queue (1-based)
    POST /r/{token}/{n}                   answer it: form fields pair_id, seq, choice -> 303 to n+1
    GET  /r/{token}/media/{pair_id}/{side} the left or right image (video, for a video pair) of an assigned
                                          pair, read from its shard
    GET  /r/{token}/done                  the end page

Security: the app serves bytes from exactly two places, the shard rows of the study's pairs (the shard
path must resolve inside OUT) and its own two static assets; pages carry a Content-Security-Policy that
allows scripts and styles from the app only (no inline script, so an injected tag could not run even if
escaping failed) and `Referrer-Policy: no-referrer` (the token is in the URL). Every bad request gets a
4xx with one line saying what was wrong: unknown token 403, unknown position or pair 404, a pair not
assigned to the rater 403, a malformed form 400, a replayed or stale answer 409.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError, field_validator
from sqlalchemy.engine import Engine

from pipelines.annotate import db
from workers.rubrics import guideline

HERE = Path(__file__).parent
# What the page's buttons and keys send, mapped to the pair's letters with the rater's left letter.
SCREEN_CHOICES = ("left", "right", "tie", "cant_tell", "skip")
SIDE_COLUMNS = {"pairs": {"A": "image_w", "B": "image_l"}, "undecided": {"A": "image_a", "B": "image_b"}}
# A video pair (the video categories) shows its videos; its image columns hold only the first frames.
VIDEO_COLUMNS = {"pairs": {"A": "video_w", "B": "video_l"}, "undecided": {"A": "video_a", "B": "video_b"}}
CSP = ("default-src 'none'; img-src 'self'; media-src 'self'; script-src 'self'; style-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# Magic numbers of what a shard's image column may hold (images, or a video for the video categories).
MEDIA_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
               (b"\x1a\x45\xdf\xa3", "video/webm"))


class Answer(BaseModel):
    pair_id: str
    seq: int
    choice: str

    @field_validator("choice")
    @classmethod
    def _choice(cls, v: str) -> str:
        if v not in SCREEN_CHOICES:
            raise ValueError(f"choice must be one of {', '.join(SCREEN_CHOICES)}")
        return v


def media_type(data: bytes) -> str | None:
    for magic, kind in MEDIA_TYPES:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return None


def to_letter(screen: str, left: str) -> str:
    """A screen answer in the pair's letters: 'left' is whatever letter was shown on the left."""
    right = "B" if left == "A" else "A"
    return {"left": left, "right": right}.get(screen, screen)


def to_screen(letter: str | None, left: str) -> str | None:
    if letter in ("A", "B"):
        return "left" if letter == left else "right"
    return letter


def create_app(out: Path, engine: Engine) -> FastAPI:
    out = Path(out).resolve()
    app = FastAPI(title="pairforge annotate", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    assets = {name: (HERE / "static" / name).read_bytes() for name in ("annotate.js", "annotate.css")}

    @lru_cache(maxsize=64)  # recent pages' media: a rater's back and forth, several raters
    def media(shard: str, kind: str, letter: str, pair_id: str) -> bytes:
        """The bytes one side of a pair shows: its video when the row has one, else its image."""
        path = (out / shard).resolve()
        if not path.is_relative_to(out) or not path.is_file():
            raise HTTPException(404, f"the shard of pair {pair_id} is not in the output directory")
        image, video = SIDE_COLUMNS[kind][letter], VIDEO_COLUMNS[kind][letter]
        try:
            columns = [c for c in (image, video) if c in pq.read_schema(path).names]  # older shards have no video
            table = pq.read_table(path, columns=["pair_id", *columns], filters=pc.field("pair_id") == pair_id)
        except (OSError, pa.ArrowException) as e:
            raise HTTPException(404, f"the shard of pair {pair_id} cannot be read: {e}") from None
        for column in reversed(columns):
            if table.num_rows and table[column][0].is_valid and table[column][0]["bytes"].as_py() is not None:
                return table[column][0]["bytes"].as_py()
        raise HTTPException(404, f"pair {pair_id} has no {image} in {shard}")

    def rater_of(token: str) -> str:
        rater = db.rater_for(engine, token)
        if rater is None:
            raise HTTPException(403, "unknown rater token: use the URL printed by `pairforge annotate`")
        return rater

    def queue_entry(token: str, n: int) -> tuple[str, list[dict], dict]:
        rater = rater_of(token)
        queue = db.queue_of(engine, rater)
        if not 1 <= n <= len(queue):
            raise HTTPException(404, f"no pair number {n}: this rater has {len(queue)}")
        return rater, queue, queue[n - 1]

    def page(name: str, **context) -> Response:
        return Response(templates.get_template(name).render(**context), media_type="text/html; charset=utf-8")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update({"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer",
                                 "X-Content-Type-Options": "nosniff"})
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(_request, e: HTTPException):
        return PlainTextResponse(str(e.detail), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request, e: RequestValidationError):
        first = e.errors()[0]
        return PlainTextResponse(f"bad request: {'.'.join(map(str, first['loc']))}: {first['msg']}", status_code=400)

    @app.get("/")
    def index():
        return PlainTextResponse("pairforge annotate: open the URL `pairforge annotate` printed for you.")

    @app.get("/favicon.ico")
    def favicon():  # browsers ask for it; no icon, and no 404 in the rater's console
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in assets:
            raise HTTPException(404, f"no asset {name}")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(assets[name], media_type=f"{kind}; charset=utf-8")

    @app.get("/r/{token}")
    def resume(token: str):
        queue = db.queue_of(engine, rater_of(token))
        todo = next((e["position"] + 1 for e in queue if e["seq"] == 0), None)
        return RedirectResponse(f"/r/{token}/{todo}" if todo else f"/r/{token}/done", status_code=303)

    @app.get("/r/{token}/done")
    def done(token: str):
        rater = rater_of(token)
        queue = db.queue_of(engine, rater)
        answered = sum(e["seq"] > 0 for e in queue)
        return page("done.html", rater=rater, answered=answered, total=len(queue), token=token)

    @app.get("/r/{token}/{n}")
    def show(token: str, n: int):
        rater, queue, e = queue_entry(token, n)
        first = to_screen(e["choice"], e["left"])
        kind = media_type(media(e["shard"], e["kind"], "A", e["pair_id"])) or "image/png"
        return page("pair.html", rater=rater, token=token, n=n, total=len(queue), e=e,
                    answered=sum(x["seq"] > 0 for x in queue), current=first, video=kind.startswith("video/"),
                    guideline=guideline(e["category"]), choices=SCREEN_CHOICES)

    @app.post("/r/{token}/{n}")
    async def answer(token: str, n: int, request: Request):
        rater, queue, e = queue_entry(token, n)
        try:
            form = await request.form()
            body = Answer.model_validate({k: form.get(k) for k in ("pair_id", "seq", "choice")})
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise HTTPException(400, f"malformed answer: {field}: {first['msg']}") from None
        except Exception as err:  # a body the form parser cannot read at all
            raise HTTPException(400, f"malformed answer body: {err}") from None
        if body.pair_id != e["pair_id"]:
            assigned = any(x["pair_id"] == body.pair_id for x in queue)
            raise HTTPException(409 if assigned else 403,
                                f"pair {body.pair_id} is not number {n} of this rater's queue" if assigned
                                else f"pair {body.pair_id} is not assigned to this rater")
        try:
            db.record_answer(engine, rater, e["pair_id"], body.seq, to_letter(body.choice, e["left"]), e["left"])
        except db.Stale as err:
            raise HTTPException(409, f"replayed or stale answer ({err}): reload the page") from None
        return RedirectResponse(f"/r/{token}/{n + 1}" if n < len(queue) else f"/r/{token}/done", status_code=303)

    @app.get("/r/{token}/media/{pair_id}/{side}")
    def image(token: str, pair_id: str, side: str):
        rater = rater_of(token)
        if side not in ("left", "right"):
            raise HTTPException(404, "side must be left or right")
        e = next((x for x in db.queue_of(engine, rater) if x["pair_id"] == pair_id), None)
        if e is None:
            raise HTTPException(403, f"pair {pair_id} is not assigned to this rater")
        data = media(e["shard"], e["kind"], to_letter(side, e["left"]), pair_id)
        return Response(data, media_type=media_type(data) or "application/octet-stream",
                        headers={"Cache-Control": "private, max-age=3600"})

    return app

