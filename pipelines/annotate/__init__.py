"""Human A/B annotation of a run's pairs: `pairforge annotate OUT --raters alice,bob`.

A round ("study") is created once per database from the output's shards (study.py) and resumed on every
later start; the web app (app.py) serves each rater their queue; answers land in the database (db.py)
and `pairforge agreement OUT` (pipelines/agreement.py) compares them with the pipeline's labels.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from pipelines.annotate import db
from pipelines.annotate.study import assign, new_tokens, sample_items
from schemas.annotate import AnnotateConfig


class StudyMismatch(ValueError):
    """The database holds a round with other settings than the ones asked for."""


def open_study(out: Path, options: dict, url: str | None = None) -> tuple[Engine, dict[str, str], bool]:
    """The engine, the raters' tokens and whether the round was created now. `options` are the
    AnnotateConfig fields the user gave; a new round needs `raters`. An existing round is resumed as it
    is (options not given keep their stored values); other settings than the stored ones are an error."""
    out = Path(out)
    if url is None and not (out / db.DEFAULT_DB).exists():
        AnnotateConfig.model_validate(options)  # bad options leave no empty database file behind
    engine = db.connect(db.db_url(out, url))
    existing = db.load_config(engine)
    if existing is None:
        cfg = AnnotateConfig.model_validate(options)
        items = sample_items(out, cfg)
        db.create_study(engine, cfg.model_dump(), new_tokens(cfg.raters), items, assign(items, cfg))
        return engine, db.rater_tokens(engine), True
    differ = {k: v for k, v in options.items() if existing.get(k) != v}
    if differ:
        diff = ", ".join(f"{k} {existing.get(k)!r} there, {v!r} asked" for k, v in differ.items())
        engine.dispose()
        raise StudyMismatch(f"{db.db_url(out, url)} holds a round with other settings ({diff}): leave those options "
                            "out to resume it, or give --db a new database for a new round")
    return engine, db.rater_tokens(engine), False
