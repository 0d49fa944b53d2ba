"""Profiles load and override; every subcommand of the command line has --help."""

import subprocess
import sys

import pytest

from medst.cli import build_parser
from medst.config import PROFILES, load_profile


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load(name):
    cfg = load_profile(name)
    assert cfg.name == name
    assert cfg.data.sequence_length == 4
    assert cfg.data.cache_size == round(cfg.data.image_size * 256 / 224)


def test_overrides_apply_and_reject_unknown_keys():
    cfg = load_profile(
        "ci",
        [
            "train.steps=7",
            "loss.similarity=cosine",
            "model.vision.kwargs.depth=3",
            "train.lr=1e-4",
            "data.augment=false",
        ],
    )
    assert cfg.train.steps == 7 and cfg.loss.similarity == "cosine" and cfg.model.vision.kwargs["depth"] == 3
    assert cfg.train.lr == 1e-4 and cfg.data.augment is False
    with pytest.raises(KeyError):
        load_profile("ci", ["train.stepz=7"])
    with pytest.raises(ValueError):
        load_profile("ci", ["train.steps"])
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("laptop")


def test_config_round_trips_through_dict():
    cfg = load_profile("gpu")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("command", ["synth", "prepare", "pretrain", "evaluate", "bench"])
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "medst.cli", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"usage: medst {command}" in out.stdout


def test_parser_requires_a_subcommand():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
