"""docker/ checked without a container engine (none where this was written): the compose file
against the Compose Specification's JSON schema (vendored in tests/unit/data/compose-spec), every
path it mounts or builds from, Alcove's config as the containers see it (with compose's
environment overrides), Synapse's homeserver.yaml as Synapse itself parses it (privacy settings,
Alcove's registrations and module), Element's config, and the Dockerfile (parsed with the
official BuildKit parser: COPY sources, stages, non-root user, health check on /ready)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, cast
from urllib.parse import urlparse

import dockerfile
import jsonschema
import pytest
from ruamel.yaml import YAML

from bridge.config import Config, load_config
from bridge.registration import write_registrations
from bridge.synapse_checks import check_synapse_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec" / "compose-spec.json"
PASSWORDS = {"SYNAPSE_DB_PASSWORD": "synapsepw123", "ALCOVE_DB_PASSWORD": "alcovepw456"}

_VARIABLE = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml(DOCKER / "compose.yaml")
    return data


@pytest.fixture(scope="module")
def homeserver() -> dict[str, Any]:
    data: dict[str, Any] = yaml(DOCKER / "synapse" / "homeserver.yaml")
    return data


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:?error} and ${VAR:-default}, as `docker compose` would with .env."""
    return _VARIABLE.sub(lambda m: env[m[1]], value)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): interpolate(str(v), PASSWORDS) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (a path relative to docker/, or a named volume)."""
    found = {}
    for volume in service.get("volumes") or []:
        source, target, *_ = str(volume).split(":")
        found[target] = source
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The file in this repository that a bind mount puts at container_path (None if it comes
    from a named volume)."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            if not source.startswith("."):
                return None
            return (DOCKER / source / path.relative_to(target)).resolve()
    raise AssertionError(f"{container_path} is not mounted in {service.get('image')}")


def volume_of(service: dict[str, Any], container_path: str) -> str:
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if PurePosixPath(target) in path.parents:
            return source
    raise AssertionError(f"{container_path} is not on a volume")


# --------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(
        json.loads(SCHEMA.read_text()), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # The schema does reject a mistake of the kind it is here to catch.
    broken = {**compose, "services": {**compose["services"], "alcove": {"imag": "alcove"}}}
    assert any("imag" in e.message for e in validator.iter_errors(broken))
    assert set(compose["services"]) == {"postgres", "setup", "synapse", "alcove", "element"}


def test_every_mounted_and_built_path_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    bound = set()
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}: not in the repository"
                bound.add(source)
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).is_file()
    assert bound == {
        "./postgres/20-alcove.sh",
        "./setup.sh",
        "./alcove",
        "./synapse",
        "../alcove_synapse",
        "./element/config.json",
    }
    # Every script a service runs from a mount is there and executable where the image needs it.
    assert (DOCKER / "setup.sh").is_file()
    assert (DOCKER / "postgres" / "20-alcove.sh").stat().st_mode & 0o111


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["synapse"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "setup": {"condition": "service_completed_successfully"},
    }
    assert services["alcove"]["depends_on"]["synapse"] == {"condition": "service_healthy"}
    assert services["alcove"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # Alcove's image and the one-shot setup are the same build.
    assert services["setup"]["build"] == services["alcove"]["build"]
    assert services["setup"]["image"] == services["alcove"]["image"]


# --------------------------------------------------------------------------- Alcove's config


def alcove_config(compose: dict[str, Any], tmp_path: Path) -> Config:
    """docker/alcove/config.yaml with the alcove service's environment, its registrations
    written as the setup service writes them (moved into tmp_path by two more overrides)."""
    env = service_env(compose["services"]["alcove"])
    env["ALCOVE__APPSERVICE__REGISTRATION"] = str(tmp_path / "registration.yaml")
    env["ALCOVE__APPSERVICE__DOUBLEPUPPET_REGISTRATION"] = str(
        tmp_path / "doublepuppet-registration.yaml"
    )
    path = DOCKER / "alcove" / "config.yaml"
    write_registrations(load_config(path, environ=env, need_tokens=False))
    return load_config(path, environ=env)


def test_alcove_config_loads_with_the_compose_overrides(
    compose: dict[str, Any],
    homeserver: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="alcove.config"):
        config = alcove_config(compose, tmp_path)
    assert [r.getMessage() for r in caplog.records] == []  # no unknown keys
    alcove = compose["services"]["alcove"]
    # The database: the environment's URL (with the password from .env) on the postgres service.
    assert config.database.url == "postgres://alcove:alcovepw456@postgres:5432/alcove"
    init = (DOCKER / "postgres" / "20-alcove.sh").read_text()
    assert "CREATE ROLE alcove LOGIN" in init and "CREATE DATABASE alcove OWNER alcove" in init
    assert "ALCOVE_DB_PASSWORD" in service_env(compose["services"]["postgres"])
    # The homeserver: the synapse service on its listener's port, under the same server name.
    listener = homeserver["listeners"][0]
    assert urlparse(config.homeserver.address).hostname == "synapse"
    assert urlparse(config.homeserver.address).port == listener["port"]
    assert config.homeserver.domain == homeserver["server_name"]
    # Synapse reaches Alcove at the alcove service, on the port Alcove listens on (all addresses).
    assert urlparse(config.appservice.address).hostname == "alcove"
    assert urlparse(config.appservice.address).port == config.appservice.port
    assert config.appservice.hostname == "0.0.0.0"  # noqa: S104 (inside its container)
    assert config.appservice.as_token and config.appservice.hs_token  # from the registration
    # homeserver.synapse_config: homeserver.yaml, mounted read-only where the config says.
    assert config.homeserver.synapse_config is not None
    hs_file = host_path(alcove, str(config.homeserver.synapse_config))
    assert hs_file == (DOCKER / "synapse" / "homeserver.yaml").resolve()
    assert config.sessions.vacuum_homeserver and "PGPASSWORD" in service_env(alcove)
    # The image's CMD reads the config from the mount.
    assert host_path(alcove, "/config/alcove/config.yaml") == (DOCKER / "alcove/config.yaml")
    assert staff_on(config, homeserver["server_name"])


def staff_on(config: Config, server_name: str) -> bool:
    return bool(config.staff) and all(m.user_id.endswith(f":{server_name}") for m in config.staff)


def test_registrations_are_shared_where_synapse_and_alcove_read_them(
    compose: dict[str, Any], homeserver: dict[str, Any]
) -> None:
    services = compose["services"]
    config = load_config(
        DOCKER / "alcove" / "config.yaml",
        environ=service_env(services["alcove"]),
        need_tokens=False,
    )
    written = [
        str(config.appservice.registration),
        str(config.appservice.doublepuppet_registration),
    ]
    assert homeserver["app_service_config_files"] == written
    for path in written:
        # On one named volume that setup writes and Synapse and Alcove mount read-only.
        volume = volume_of(services["synapse"], path)
        assert volume in compose["volumes"]
        assert volume_of(services["alcove"], path) == volume
        assert volume_of(services["setup"], path) == volume
    # Only setup writes there.
    assert f"{volume}:/registration" in services["setup"]["volumes"]
    for name in ("synapse", "alcove"):
        assert f"{volume}:/registration:ro" in services[name]["volumes"]
    # setup.sh writes them (once) with the mounted config, and Synapse runs as the uid that
    # owns them (they are 0600).
    setup = (DOCKER / "setup.sh").read_text()
    assert "alcove generate-registration -c" in setup and "/registration/registration.yaml" in setup
    assert host_path(services["setup"], "/config/alcove/config.yaml") == (
        DOCKER / "alcove" / "config.yaml"
    )
    assert host_path(services["setup"], services["setup"]["entrypoint"][-1]) == DOCKER / "setup.sh"
    synapse_env = service_env(services["synapse"])
    assert (synapse_env["UID"], synapse_env["GID"]) == ("10001", "10001")
    assert "chown -R 10001:10001 /registration /synapse-data" in setup
    assert volume_of(services["setup"], "/synapse-data/x") == mounts(services["synapse"])["/data"]


# --------------------------------------------------------------------------- Synapse


def test_homeserver_has_the_privacy_settings_the_readme_asks_for(
    homeserver: dict[str, Any],
) -> None:
    log_config = yaml(DOCKER / "synapse" / "log.config")
    checks = {c.name: c for c in check_synapse_config(homeserver, log_config)}
    failed = {n: c.detail for n, c in checks.items() if not c.ok and not c.warning}
    assert failed == {}
    assert checks["deleted rows leave no bytes on disk"].warning  # vacuum: advice, done by Alcove
    assert homeserver["push"] == {"include_content": False}
    assert homeserver["url_preview_enabled"] is False
    assert homeserver["redaction_retention_period"] not in (None, "7d")
    assert homeserver["log_config"] == "/config/synapse/log.config"
    assert log_config["root"]["level"] == "WARNING"
    assert log_config["loggers"]["synapse"]["level"] == "WARNING"
    assert homeserver["enable_registration"] is False
    assert homeserver["presence"] == {"enabled": False}
    assert homeserver["database"]["name"] == "psycopg2"
    assert "password" not in homeserver["database"]["args"]  # PGPASSWORD, from .env


def test_synapse_parses_the_homeserver_config_with_the_module_and_registrations(
    compose: dict[str, Any], homeserver: dict[str, Any], tmp_path: Path
) -> None:
    """Synapse's own config loader reads homeserver.yaml (paths moved into tmp_path): it loads
    alcove_synapse with its config, reads both registrations, creates its keys."""
    from synapse.config.appservice import load_appservices
    from synapse.config.homeserver import HomeServerConfig

    import alcove_synapse

    synapse = compose["services"]["synapse"]
    config = alcove_config(compose, tmp_path / "registration")
    text = (DOCKER / "synapse" / "homeserver.yaml").read_text()
    for container_dir, local in (
        ("/data/", tmp_path / "data"),
        ("/registration/", tmp_path / "registration"),
        ("/config/synapse/", tmp_path / "synapse"),
    ):
        assert container_dir.rstrip("/") in mounts(synapse), container_dir
        local.mkdir(exist_ok=True)
        text = text.replace(container_dir, f"{local}/")
    (tmp_path / "synapse" / "homeserver.yaml").write_text(text)
    shutil.copy(DOCKER / "synapse" / "log.config", tmp_path / "synapse" / "log.config")

    hs = HomeServerConfig.load_or_generate_config(
        "alcove test", ["-c", str(tmp_path / "synapse" / "homeserver.yaml")]
    )
    assert hs is not None
    assert hs.server.server_name == config.homeserver.domain
    assert hs.server.public_baseurl == "http://localhost:8008/"
    assert hs.server.redaction_retention_period is not None
    assert hs.server.redaction_retention_period <= 86_400_000
    assert hs.push.push_include_content is False
    assert hs.media.url_preview_enabled is False
    # (Synapse types the parsed config as a dict; AlcoveRules.parse_config returns RulesConfig.)
    [(module, module_config)] = cast(list[tuple[type, object]], hs.modules.loaded_modules)
    assert module is alcove_synapse.AlcoveRules
    assert module_config == alcove_synapse.RulesConfig(
        bot_user_id=config.bot_user_id, client_prefix=config.appservice.client_prefix
    )
    services = load_appservices(hs.server.server_name, hs.appservice.app_service_config_files)
    assert sorted(s.id for s in services) == sorted(
        [config.appservice.id, yaml(config.appservice.doublepuppet_registration)["id"]]
    )
    assert {s.url for s in services} == {config.appservice.address, None}
    # Synapse made its signing key and registration secret under /data (a named volume).
    assert {p.name for p in (tmp_path / "data").iterdir()} >= {
        "signing.key",
        "registration_shared_secret",
    }
    assert not mounts(synapse)["/data"].startswith(".")
    # The module comes from this repository, on Synapse's Python path.
    assert host_path(synapse, "/modules/alcove_synapse") == ROOT / "alcove_synapse"
    assert service_env(synapse)["PYTHONPATH"] == "/modules"


# --------------------------------------------------------------------------- Element


def test_element_offers_this_homeserver(
    compose: dict[str, Any], homeserver: dict[str, Any]
) -> None:
    element = compose["services"]["element"]
    config_file = host_path(element, "/app/config.json")
    assert config_file == DOCKER / "element" / "config.json"
    config = json.loads(config_file.read_text())
    server = config["default_server_config"]["m.homeserver"]
    # The same base URL Synapse puts in its /.well-known/matrix/client (public_baseurl).
    assert server["base_url"] == homeserver["public_baseurl"].rstrip("/")
    assert server["server_name"] == homeserver["server_name"]
    published = {str(p).split(":")[0] for p in compose["services"]["synapse"]["ports"]}
    assert str(urlparse(server["base_url"]).port) in published
    assert config["disable_custom_urls"] is True
    assert config["setting_defaults"]["UIFeature.urlPreviews"] is False


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_slim_non_root_with_a_health_check_on_ready(
    compose: dict[str, Any],
) -> None:
    commands = dockerfile.parse_file(str(DOCKER / "Dockerfile"))
    stages: list[list[Any]] = []
    for command in commands:
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    assert len(stages) >= 2
    for stage in stages:
        assert stage[0].value[0].startswith("python:") and stage[0].value[0].endswith("-slim")
    final = stages[-1]

    # COPY sources: the repository's files (the build context is its root), or an earlier stage.
    ignore = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = 0
    for command in commands:
        if command.cmd not in ("COPY", "ADD"):
            continue
        assert command.cmd == "COPY"
        if any(flag.startswith("--from=") for flag in command.flags):
            continue
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is ignored"
            copied += 1
    assert copied >= 5
    assert ignore[0] == "*"  # everything else stays out of the build context

    # Runs as a non-root user: the last USER of the final stage, numeric, not 0.
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert uid == "10001" == service_env(compose["services"]["synapse"])["UID"]

    # The health check asks /ready on the appservice listener.
    [health] = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert health.value[0] == "CMD"
    env = dict(zip(*[iter(v for c in final if c.cmd == "ENV" for v in c.value)] * 2, strict=True))
    assert urlparse(env["ALCOVE_READY_URL"]).path == "/ready"
    assert "ALCOVE_READY_URL" in " ".join(health.value)
    alcove = load_config(
        DOCKER / "alcove" / "config.yaml",
        environ=service_env(compose["services"]["alcove"]),
        need_tokens=False,
    )
    assert urlparse(env["ALCOVE_READY_URL"]).port == alcove.appservice.port
    [entrypoint] = [c.value for c in final if c.cmd == "ENTRYPOINT"]
    [cmd] = [c.value for c in final if c.cmd == "CMD"]
    assert list(entrypoint) == ["alcove"] and list(cmd) == [
        "run",
        "-c",
        "/config/alcove/config.yaml",
    ]
