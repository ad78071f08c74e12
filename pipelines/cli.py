"""The `pairforge` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Generate, label and train on categorized visual preference pairs.")
models_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(models_app, name="models")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr and a non-zero exit: 2 for bad input (config, prompts), 1 for a run that stopped."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


SET_HELP = "override a config key: dotted.path=YAML-value (repeatable)"


@app.command()
def run(config: Path = typer.Argument(..., help="run config (YAML)"),
        output: str | None = typer.Option(None, help="override output.path"),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        break_lease: bool = typer.Option(False, "--break-lease", help="take over the output directory's lease even "
                                         "if its holder looks alive (you know it is dead)")) -> None:
    """Run a pipeline config: prompts -> generated, judged pairs -> shards, manifest and stats in OUTPUT."""
    from pipelines.lease import OutputBusy
    from pipelines.progress import RunHalted
    from pipelines.prompts import PromptsError
    from pipelines.run import run as run_pipeline
    from pipelines.stats import format_stats
    from schemas.config import ConfigError, load_run_config, parse_overrides

    _setup_logging()
    try:
        overrides = parse_overrides(set_)
        if output:
            overrides["output.path"] = output
        cfg = load_run_config(config, overrides)
        report = run_pipeline(cfg, str(config), break_lease=break_lease)
    except (ConfigError, PromptsError) as e:
        _fail(str(e))
    except OutputBusy as e:
        _fail(str(e), code=3)
    except RunHalted as e:
        _fail(str(e), code=1)
    typer.echo(format_stats(report))
    typer.echo(f"output: {os.path.abspath(cfg.output.path)}")


@app.command()
def stats(output: Path = typer.Argument(..., help="output directory of a run"),
          as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
          html: Path | None = typer.Option(None, "--html", help="also write an HTML report with plots and samples")) -> None:
    """Counts, agreement, position bias, abstentions, reward consistency and the Arena of an output directory."""
    from pipelines.stats import format_stats, write_stats

    if not (output / "pairs").is_dir():
        _fail(f"{output}: not a pairforge output directory (no pairs/ inside)")
    report = write_stats(output)
    typer.echo(json.dumps(report, indent=1) if as_json else format_stats(report))
    if html:
        from pipelines.report import write_html

        typer.echo(f"report: {write_html(output, report, html)}")


@app.command()
def plan(config: Path = typer.Argument(..., help="run config (YAML)"),
         pairs: int = typer.Option(..., "--pairs", min=1, help="pairs to plan for, split over the config's categories "
                                                                "as their target_pairs (evenly when unset)"),
         from_: list[Path] = typer.Option([], "--from", help="output directories of earlier runs of this config on "
                                                             "the target hardware (their manifests' cost accounting)"),
         calibrate: int | None = typer.Option(None, "--calibrate", min=1, help="first run this many pairs per "
                                              "category into --calibration-output, then plan from that run"),
         calibration_output: Path | None = typer.Option(None, "--calibration-output",
                                                        help="where --calibrate writes (default: OUTPUT.path-calibration)"),
         deadline: float | None = typer.Option(None, "--deadline", help="hours: the actors per pool that finish by then"),
         gpus: int | None = typer.Option(None, "--gpus", help="a fixed GPU count: its balanced split across GPU pools"),
         json_out: Path | None = typer.Option(None, "--json", help="also write the plan here as JSON"),
         set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """What N pairs will cost: busy seconds and GPU-hours per pool, the bottleneck, the predicted time, the
    actors per pool for a deadline or the split of a fixed GPU count, from measured runs."""
    from pipelines.plan import PlanError, calibration_config, format_plan, make_plan, measurements
    from pipelines.prompts import PromptsError
    from schemas.config import ConfigError, load_run_config, parse_overrides

    _setup_logging()
    try:
        overrides = parse_overrides(set_)
        cfg = load_run_config(config, overrides)
        sources = list(from_)
        if calibrate:
            from pipelines.run import run as run_pipeline

            where = str(calibration_output or f"{cfg.output.path.rstrip('/')}-calibration")
            run_pipeline(calibration_config(str(config), where, calibrate, overrides), str(config))
            sources.append(Path(where))
        if not sources:
            _fail("plan: nothing to plan from: pass --from OUT (an earlier run of this config on the target hardware) "
                  "or --calibrate K (run K pairs per category first)")
        result = make_plan(cfg, pairs, measurements(sources), deadline_h=deadline, gpus=gpus)
    except (ConfigError, PromptsError, PlanError) as e:
        _fail(str(e))
    typer.echo(format_plan(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
        typer.echo(f"plan: {json_out}")


@app.command()
def train(config: Path = typer.Argument(..., help="training config (YAML)"),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Diffusion-DPO / Poly-DPO with Ray Train on pair shards; resumes from the latest checkpoint."""
    from schemas.config import ConfigError, load_train_config, parse_overrides
    from training.data import TrainDataError
    from training.train import TrainingHalted
    from training.train import train as train_job

    _setup_logging()
    try:
        cfg = load_train_config(config, parse_overrides(set_))
        result = train_job(cfg)
    except (ConfigError, FileNotFoundError, TrainDataError) as e:
        _fail(str(e))
    except TrainingHalted as e:
        _fail(str(e), code=1)
    m = result.metrics or {}
    typer.echo(f"trained to step {m.get('step')}: loss {m.get('loss', float('nan')):.4f}, "
               f"implicit acc {m.get('implicit_acc', float('nan')):.2f}")
    typer.echo(f"checkpoint: {Path(cfg.output).resolve() / cfg.name / 'final'}")


@app.command()
def release(paths: list[Path] = typer.Argument(..., help="OUT [OUT ...] DEST: run output directories, then the release"),
            config: Path = typer.Option(..., "--config", help="release config (YAML; see configs/release_demo.yaml)"),
            set_: list[str] = typer.Option([], "--set", help=SET_HELP),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing, non-empty DEST"),
            push: str | None = typer.Option(None, "--push", help="then upload DEST to this Hub dataset repo (ORG/NAME)")) -> None:
    """Turn run outputs into a Hub-ready dataset: splits, selection, decontamination, card, Croissant, checksums."""
    from pipelines.release import ReleaseError
    from pipelines.release import release as release_job
    from schemas.config import ConfigError, parse_overrides
    from schemas.release import load_release_config

    _setup_logging()
    if len(paths) < 2:
        _fail("release: give at least one run output directory and then DEST")
    *outs, dest = paths
    try:
        cfg = load_release_config(config, parse_overrides(set_))
        report = release_job(outs, dest, cfg, overwrite=overwrite, config_path=str(config))
    except (ConfigError, ReleaseError) as e:
        _fail(str(e))
    for cat, v in report["categories"].items():
        typer.echo(f"{cat:<15} released {v['released_pairs']:>7}  {v['released']}  dropped {v['dropped']}")
    t = report["totals"]
    typer.echo(f"released {t['released_pairs']} of {t['decided']} decided pairs; decontamination removed "
               f"{t['decontaminated_prompts']} prompts ({t['decontaminated_pairs']} pairs)")
    typer.echo(f"release: {dest.resolve()}")
    if push:
        from pipelines.release import push as push_release

        typer.echo(f"pushed: {push_release(dest, push)}")


def _output_dir(output: Path) -> None:
    if not (output / "pairs").is_dir():
        _fail(f"{output}: not a pairforge output directory (no pairs/ inside)")


@app.command()
def annotate(output: Path = typer.Argument(..., help="output directory of a run"),
             raters: str | None = typer.Option(None, help="comma-separated rater names (needed to start a round)"),
             sample: int | None = typer.Option(None, help="pairs drawn per category [default: 50]"),
             gold: int | None = typer.Option(None, help="gold pairs (constructed truth) shown to every rater [default: 10]"),
             raters_per_pair: int | None = typer.Option(None, help="raters who see each pair [default: 3]"),
             seed: int | None = typer.Option(None, help="seed of the sample, the assignment and the sides [default: 0]"),
             host: str = typer.Option("127.0.0.1", help="address to listen on (localhost: only this machine)"),
             port: int = typer.Option(8765, help="port to listen on"),
             db: str | None = typer.Option(None, "--db", help="database URL [default: sqlite OUT/annotations.sqlite]; "
                                           "postgresql+psycopg://user@host/name for PostgreSQL"),
             urls_only: bool = typer.Option(False, "--urls-only", help="create or check the round, print the URLs, "
                                            "do not serve")) -> None:
    """Serve A/B pages to human raters (one URL per rater); answers go to the database as they are given."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from pipelines.annotate import StudyMismatch, open_study

    _output_dir(output)
    given = {"raters": raters.split(",") if raters else None, "sample": sample, "gold": gold,
             "raters_per_pair": raters_per_pair, "seed": seed}
    try:
        engine, tokens, created = open_study(output, {k: v for k, v in given.items() if v is not None}, db)
    except ValidationError as e:
        first = e.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-') if first['loc'] else 'raters'}: {first['msg']}")
    except StudyMismatch as e:
        _fail(str(e))
    except (SQLAlchemyError, ImportError) as e:
        _fail(f"--db {db or 'default'}: cannot open the database: {str(e).splitlines()[0]}")
    shown = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    if shown != "localhost":
        typer.secho(f"listening on {host}: anyone who can reach port {port} and holds a URL can answer as that rater; "
                    "serve it over TLS (a reverse proxy) or an SSH tunnel", fg=typer.colors.YELLOW, err=True)
    typer.echo(("created" if created else "resumed") + f" annotation round in {engine.url.render_as_string(hide_password=True)}")
    for name, token in tokens.items():
        typer.echo(f"{name}: http://{shown}:{port}/r/{token}")
    sys.stdout.flush()
    if urls_only:
        return
    import uvicorn

    from pipelines.annotate.app import create_app

    uvicorn.run(create_app(output, engine), host=host, port=port, log_level="warning")


@app.command()
def agreement(output: Path = typer.Argument(..., help="output directory of a run"),
              db: str | None = typer.Option(None, "--db", help="database URL [default: sqlite OUT/annotations.sqlite]"),
              as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Human-human and VLM-human agreement of an annotation round; writes OUT/agreement.json."""
    from pipelines.agreement import format_agreement, write_agreement

    report = write_agreement(output, _round(output, db))
    typer.echo(json.dumps(report, indent=1) if as_json else format_agreement(report))
    typer.echo(f"report: {output / 'agreement.json'}")


TOOLS = {"label-studio": "label_studio", "argilla": "argilla"}


def _round(output: Path, db: str | None):
    """The engine of an existing annotation round (one line and exit 2 when there is none)."""
    from pipelines.annotate import db as annotate_db

    _output_dir(output)
    if db is None and not (output / annotate_db.DEFAULT_DB).exists():
        _fail(f"{output / annotate_db.DEFAULT_DB}: no annotation round here; "
              f"start one with `pairforge annotate {output} --raters ...` (add --urls-only to only create it)")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = annotate_db.connect(annotate_db.db_url(output, db))
        found = annotate_db.load_config(engine) is not None
    except (SQLAlchemyError, ImportError) as e:
        _fail(f"--db {db or 'default'}: cannot open the database: {str(e).splitlines()[0]}")
    if not found:
        _fail(f"{db or output / annotate_db.DEFAULT_DB}: no annotation round here; "
              f"start one with `pairforge annotate {output} --raters ...`")
    return engine


@app.command("annotate-export")
def annotate_export(output: Path = typer.Argument(..., help="output directory of a run"),
                    directory: Path = typer.Argument(..., help="where to write the export"),
                    to: str = typer.Option(..., "--to", help="label-studio | argilla"),
                    db: str | None = typer.Option(None, "--db", help="database URL of the round")) -> None:
    """Write the round's pairs as Label Studio tasks (+ labeling config) or Argilla records."""
    from pipelines.annotate.exchange import export_argilla, export_label_studio

    if to not in TOOLS:
        _fail(f"--to {to}: use one of {', '.join(TOOLS)}")
    engine = _round(output, db)
    for path in (export_label_studio if to == "label-studio" else export_argilla)(output, engine, directory):
        typer.echo(f"wrote {path}")


@app.command("annotate-import")
def annotate_import(output: Path = typer.Argument(..., help="output directory of a run"),
                    file: Path = typer.Argument(..., help="Label Studio JSON export or Argilla records (JSON)"),
                    source: str = typer.Option(..., "--from", help="label-studio | argilla"),
                    db: str | None = typer.Option(None, "--db", help="database URL of the round")) -> None:
    """Store answers given in Label Studio or Argilla on an exported round (then run `pairforge agreement`)."""
    from pipelines.annotate.exchange import ExchangeError, import_answers

    if source not in TOOLS:
        _fail(f"--from {source}: use one of {', '.join(TOOLS)}")
    engine = _round(output, db)
    try:
        counts = import_answers(engine, file, TOOLS[source])
    except ExchangeError as e:
        _fail(str(e))
    typer.echo(f"{counts['answers']} answers stored, {counts['unchanged']} already there, "
               f"{counts['raters_added']} raters added")


@models_app.command("tiny")
def tiny(directory: Path = typer.Argument(..., help="where to build the kit")) -> None:
    """Build the tiny-model kit (random weights, real architectures) into DIRECTORY, offline."""
    from workers.runtime import setup_worker
    from workers.tiny_models import TINY_MODELS, build_tiny_models

    setup_worker()
    build_tiny_models(directory)
    for name, kind in TINY_MODELS.items():
        typer.echo(f"{kind:<10} {directory / name}")


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
