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
def train(config: Path = typer.Argument(..., help="training config (YAML)"),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Diffusion-DPO / Poly-DPO with Ray Train on pair shards; resumes from the latest checkpoint."""
    from schemas.config import ConfigError, load_train_config, parse_overrides
    from training.train import train as train_job

    _setup_logging()
    try:
        cfg = load_train_config(config, parse_overrides(set_))
    except (ConfigError, FileNotFoundError) as e:
        _fail(str(e))
    result = train_job(cfg)
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
