"""The annotation database, through SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL from a URL.

Tables:
    study        key/value: the round's config (schemas.annotate.AnnotateConfig) as JSON
    raters       name, token (the secret in the rater's URL)
    items        one row per sampled pair: where its images live (shard path under OUT), its prompt, the
                 pipeline's label (A = winner of a decided pair), gold truth
    assignments  which rater sees which pair, at which position of the rater's queue, with which letter
                 shown on the left
    answers      every answer ever given (history); `seq` numbers a rater's answers to one pair 1, 2, ...
                 and the latest counts. UNIQUE(rater, pair_id, seq) makes a replayed or stale submission
                 fail in the database itself, even with two requests racing.

Each answer is its own transaction, committed before the rater's next page is served; with SQLite the
journal is WAL (readers never block the writer, so several raters answer at once) and `synchronous=FULL`
(a committed answer survives a power cut).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    literal,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

DEFAULT_DB = "annotations.sqlite"

metadata = MetaData()
study = Table("study", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))
raters = Table("raters", metadata, Column("name", String(64), primary_key=True),
               Column("token", String(64), nullable=False, unique=True))
items = Table(
    "items", metadata,
    Column("pair_id", String(64), primary_key=True),
    Column("category", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),        # "pairs" (decided) | "undecided"
    Column("shard", Text, nullable=False),             # path of its shard, relative to OUT
    Column("prompt", Text, nullable=False),
    Column("label", String(8)),                        # the pipeline's choice: "A" for decided pairs, null otherwise
    Column("label_source", String(32)),                # vlm_panel | ocr | construction | ...; undecided: null
    Column("confidence", Float),                       # the panel's confidence in its winner (null when none)
    Column("reason", String(32)),                      # undecided: tie | conflict | no_quorum | all_abstained
    Column("truth", String(8)),                        # constructed truth ("A") for gold-eligible pairs, else null
    Column("gold", Boolean, nullable=False),           # shown to every rater
)
assignments = Table(
    "assignments", metadata,
    Column("rater", String(64), ForeignKey("raters.name"), primary_key=True),
    Column("pair_id", String(64), ForeignKey("items.pair_id"), primary_key=True),
    Column("position", Integer, nullable=False),       # 0-based place in the rater's queue
    Column("left", String(1), nullable=False),         # the letter shown on the left: "A" | "B"
    UniqueConstraint("rater", "position"),
)
answers = Table(
    "answers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rater", String(64), ForeignKey("raters.name"), nullable=False),
    Column("pair_id", String(64), ForeignKey("items.pair_id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("choice", String(16), nullable=False),      # schemas.annotate.CHOICES, in the pair's letters
    Column("shown_left", String(1)),                   # the letter on the left when it was given (null: imported)
    Column("source", String(32), nullable=False),      # "web" | "label_studio" | "argilla"
    Column("created_at", Float, nullable=False),       # unix time
    UniqueConstraint("rater", "pair_id", "seq"),
)


class Stale(Exception):
    """The submission does not continue the rater's history for that pair (replayed or out of date)."""


def db_url(out: Path, url: str | None) -> str:
    return url or f"sqlite:///{(Path(out) / DEFAULT_DB).resolve()}"


def connect(url: str) -> Engine:
    """An engine with the schema created. SQLite connections get WAL, FULL sync, foreign keys and a
    busy timeout (a writer waits for another instead of failing)."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=10000"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()
    metadata.create_all(engine)
    return engine


def load_config(engine: Engine) -> dict | None:
    with engine.connect() as c:
        value = c.execute(select(study.c.value).where(study.c.key == "config")).scalar()
    return json.loads(value) if value else None


def create_study(engine: Engine, config: dict, tokens: dict[str, str], rows: list[dict], queue: list[dict]) -> None:
    """Everything of a new round in one transaction: a crash leaves no half-made study."""
    with engine.begin() as c:
        c.execute(study.insert(), [{"key": "config", "value": json.dumps(config)},
                                   {"key": "created_at", "value": str(time.time())}])
        c.execute(raters.insert(), [{"name": n, "token": t} for n, t in tokens.items()])
        if rows:
            c.execute(items.insert(), rows)
        if queue:
            c.execute(assignments.insert(), queue)


def rater_tokens(engine: Engine) -> dict[str, str]:
    with engine.connect() as c:
        return dict(c.execute(select(raters.c.name, raters.c.token).order_by(raters.c.name)).all())


def rater_for(engine: Engine, token: str) -> str | None:
    with engine.connect() as c:
        return c.execute(select(raters.c.name).where(raters.c.token == token)).scalar()


def queue_of(engine: Engine, rater: str) -> list[dict]:
    """The rater's assignments in order, each with its item and the rater's latest answer and count."""
    latest = (select(answers.c.pair_id, func.max(answers.c.seq).label("seq"))
              .where(answers.c.rater == rater).group_by(answers.c.pair_id).subquery())
    last = answers.alias("last")
    q = (select(assignments.c.position, assignments.c.left, items, latest.c.seq, last.c.choice)
         .join(items, items.c.pair_id == assignments.c.pair_id)
         .outerjoin(latest, latest.c.pair_id == assignments.c.pair_id)
         .outerjoin(last, (last.c.rater == rater) & (last.c.pair_id == latest.c.pair_id) & (last.c.seq == latest.c.seq))
         .where(assignments.c.rater == rater).order_by(assignments.c.position))
    with engine.connect() as c:
        return [{**r._asdict(), "seq": r.seq or 0} for r in c.execute(q)]


def record_answer(engine: Engine, rater: str, pair_id: str, seq: int, choice: str, shown_left: str | None,
                  source: str = "web") -> None:
    """Store answer number `seq` (1-based) of `rater` on `pair_id`, committed on return. Raises Stale when
    that number is taken (a replay, or a second tab) or skips one.

    One INSERT ... SELECT ... WHERE <answers so far> = seq - 1: a single statement takes SQLite's write
    lock before it reads, so two racing requests queue instead of one failing on a stale snapshot; on
    PostgreSQL both may pass the check and the unique key turns the second into an IntegrityError."""
    so_far = (select(func.count()).select_from(answers)
              .where((answers.c.rater == rater) & (answers.c.pair_id == pair_id)).scalar_subquery())
    row = select(literal(rater, String), literal(pair_id, String), literal(seq, Integer), literal(choice, String),
                 literal(shown_left, String), literal(source, String), literal(time.time(), Float)).where(so_far == seq - 1)
    insert = (answers.insert().from_select(["rater", "pair_id", "seq", "choice", "shown_left", "source", "created_at"], row)
              .returning(answers.c.id))  # rowcount of an INSERT ... SELECT is not reported by every driver
    try:
        with engine.begin() as c:
            inserted = len(c.execute(insert).all())
    except IntegrityError as e:
        raise Stale(f"answer {seq} of {rater} on {pair_id} was already given") from e
    if inserted != 1:
        with engine.connect() as c:
            have = c.execute(select(so_far)).scalar()
        raise Stale(f"answer {seq} of {rater} on {pair_id}: {have} given so far")


def latest_answers(engine: Engine) -> list[dict]:
    """Each rater's latest answer per pair: {rater, pair_id, choice, shown_left, source}."""
    latest = (select(answers.c.rater, answers.c.pair_id, func.max(answers.c.seq).label("seq"))
              .group_by(answers.c.rater, answers.c.pair_id).subquery())
    q = (select(answers.c.rater, answers.c.pair_id, answers.c.choice, answers.c.shown_left, answers.c.source)
         .join(latest, (latest.c.rater == answers.c.rater) & (latest.c.pair_id == answers.c.pair_id)
               & (latest.c.seq == answers.c.seq))
         .order_by(answers.c.pair_id, answers.c.rater))
    with engine.connect() as c:
        return [r._asdict() for r in c.execute(q)]


def all_items(engine: Engine) -> list[dict]:
    with engine.connect() as c:
        return [r._asdict() for r in c.execute(select(items).order_by(items.c.pair_id))]


def all_assignments(engine: Engine) -> list[dict]:
    with engine.connect() as c:
        return [r._asdict() for r in c.execute(select(assignments).order_by(assignments.c.rater, assignments.c.position))]
