"""Configs: the shipped ones validate; bad ones fail with the file and the key in the message."""

from pathlib import Path

import pytest
import yaml

from schemas.config import ConfigError, load_run_config, load_train_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo.yaml", "cluster_run.yaml"])
def test_shipped_run_configs_validate(name):
    cfg = load_run_config(REPO / "configs" / name)
    assert cfg.categories and len(cfg.config_hash()) == 16


@pytest.mark.parametrize("name", ["demo_train.yaml", "cluster_train.yaml"])
def test_shipped_train_configs_validate(name):
    assert load_train_config(REPO / "configs" / name).max_steps >= 1


def _write(tmp_path, mutate):
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["categories"]["composition"].update(generators=["sd", "nope"]),
     "categories.composition.generators: unknown generator 'nope'"),
    (lambda d: d["panels"]["main"].update(quorum=4), "quorum 4 exceeds the panel size 3"),
    (lambda d: d["generators"]["sd"].update(width=100), "generators.sd.width"),
    (lambda d: d["generators"]["sd"].update(stepz=3), "generators.sd.stepz: Extra inputs are not permitted"),
    (lambda d: d["categories"].update(cats={"generators": ["sd", "flux"], "panel": "main"}), "unknown category 'cats'"),
    (lambda d: d.pop("output"), "output: Field required"),
])
def test_invalid_configs_name_file_and_key(tmp_path, mutate, expected):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_unreadable_configs(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(bad)


def test_config_hash_ignores_where_it_runs_but_not_what_it_makes():
    base = load_run_config(REPO / "configs/demo.yaml")
    moved = load_run_config(REPO / "configs/demo.yaml", {"output.path": "/elsewhere", "ray.num_cpus": 8})
    changed = load_run_config(REPO / "configs/demo.yaml", {"seed": 7})
    assert base.config_hash() == moved.config_hash() != changed.config_hash()
