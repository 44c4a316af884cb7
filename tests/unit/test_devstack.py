"""bridge/devstack.py: the dev stack works from any working directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from signedjson.key import read_signing_keys

from bridge.devstack import DevStack, synapse_env
from bridge.registration import dump_yaml, outdated


def test_a_relative_state_dir_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = DevStack(Path(".alcove-dev"))
    assert stack.state_dir == tmp_path / ".alcove-dev"
    assert stack.hs_config_path.is_absolute()


def test_prepare_from_a_relative_dir_writes_absolute_synapse_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` passes `.alcove-dev`; Synapse runs in another working directory."""
    monkeypatch.chdir(tmp_path)
    stack = DevStack(Path("state"))
    config = stack.prepare()
    # The signing key, in the form Synapse reads (one ed25519 key, id a_XXXX): written in-process
    # with Synapse's own signedjson calls rather than by a second Synapse run.
    with (tmp_path / "state" / "synapse" / "signing.key").open() as f:
        [key] = read_signing_keys(f)
    assert key.alg == "ed25519" and re.fullmatch(r"a_[A-Za-z]{4}", key.version)
    stack.prepare()  # a second prepare keeps it
    with (tmp_path / "state" / "synapse" / "signing.key").open() as f:
        assert [k.version for k in read_signing_keys(f)] == [key.version]
    hs = stack.hs_config_path.read_text()
    assert str(tmp_path / "state" / "synapse" / "homeserver.db") in hs
    assert config.appservice.registration.is_absolute()
    assert os.access(config.appservice.registration, os.R_OK)


def test_prepare_brings_an_old_state_dirs_registrations_up_to_date(tmp_path: Path) -> None:
    """A state dir from an older Alcove: same tokens, current form (no receive_ephemeral, the
    double-puppet namespace limited to local users)."""
    stack = DevStack(tmp_path / "state")
    config = stack.prepare()
    yaml = YAML(typ="safe")
    main = yaml.load(config.appservice.registration.read_text())
    dp = yaml.load(config.appservice.doublepuppet_registration.read_text())
    old_dp = {**dp, "namespaces": {"users": [{"regex": "^@.*:localhost$", "exclusive": False}]}}
    config.appservice.registration.write_text(dump_yaml({**main, "receive_ephemeral": True}))
    config.appservice.doublepuppet_registration.write_text(dump_yaml(old_dp))
    assert outdated(config)
    config = stack.prepare()
    assert outdated(config) == []
    assert yaml.load(config.appservice.registration.read_text()) == main
    assert yaml.load(config.appservice.doublepuppet_registration.read_text()) == dp


def test_synapse_loads_alcoves_module_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Synapse imports alcove_synapse when it starts, in its own working directory: the checkout
    is on its PYTHONPATH (the integration Synapse shows that it loads)."""
    monkeypatch.chdir(tmp_path)
    with_module = DevStack(Path("with"))
    with_module.prepare()
    assert "module: alcove_synapse.AlcoveRules" in with_module.hs_config_path.read_text()
    root = str(Path(__file__).resolve().parents[2])
    assert root in synapse_env()["PYTHONPATH"].split(os.pathsep)
    without = DevStack(Path("without"), rules_module=False)
    without.prepare()
    assert "alcove_synapse.AlcoveRules" not in without.hs_config_path.read_text()
