"""Configuration: parsed once, wrong values refused with a sentence naming the variable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from service.brokers import broker_from_settings
from service.brokers.redis import RedisBroker
from service.config import DEFAULTS, ConfigError, Settings, load_settings, specs

STRONG = "s" * 32


def load(**env: str) -> Settings:
    """Settings from exactly these variables."""
    return load_settings(env, env_file=None)


def test_defaults_start_in_dev_mode_with_generated_secrets() -> None:
    """With nothing configured, dev mode generates a secret and a publisher key."""
    s = load()
    assert s.env == "dev" and s.dev_secrets
    assert s.port == 8765 and s.broker_url == "memory://" and s.jwt_audience == "progress-relay"
    assert len(s.jwt_keys[0][1]) >= 32 and len(s.publish_keys[0]) >= 32


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"RELAY_PORT": "eighty"}, "RELAY_PORT"),
        ({"RELAY_PORT": "70000"}, "RELAY_PORT"),
        ({"RELAY_ENV": "staging"}, "RELAY_ENV"),
        ({"RELAY_WORKERS": "0"}, "RELAY_WORKERS"),
        ({"RELAY_JWT_ALGORITHM": "none"}, "RELAY_JWT_ALGORITHM"),
        ({"RELAY_JWT_LEEWAY": "60"}, "RELAY_JWT_LEEWAY"),
        ({"RELAY_BROKER_URL": "kafka://x"}, "RELAY_BROKER_URL"),
        ({"RELAY_ACCESS_LOG": "maybe"}, "RELAY_ACCESS_LOG"),
        ({"RELAY_HISTORY_SIZE": "0"}, "RELAY_HISTORY_SIZE"),
        ({"RELAY_WS_PING_INTERVAL": "soon"}, "RELAY_WS_PING_INTERVAL"),
        ({"RELAY_JWT_SECRET": "a:1,a:2"}, "RELAY_JWT_SECRET"),
        ({"RELAY_JWT_SECRET": "one,two"}, "RELAY_JWT_SECRET"),
        ({"RELAY_JWT_ALGORITHM": "RS256"}, "RELAY_JWT_PUBLIC_KEYS"),
        ({"RELAY_JWT_ALGORITHM": "RS256", "RELAY_JWT_PUBLIC_KEYS": "/nonexistent.pem"}, "RELAY_JWT_PUBLIC_KEYS"),
        ({"RELAY_JWT_ALGORITHM": "RS256", "RELAY_JWT_SECRET": STRONG}, "RELAY_JWT_SECRET"),
        ({"RELAY_JWT_PUBLIC_KEYS": "/x.pem"}, "RELAY_JWT_PUBLIC_KEYS"),
    ],
)
def test_wrong_values_name_the_variable(env: dict[str, str], name: str) -> None:
    """Each wrong value stops the start with one sentence naming the variable."""
    with pytest.raises(ConfigError) as exc:
        load(**env)
    message = str(exc.value)
    assert message.startswith(name) and message.endswith(".") and "\n" not in message


def test_several_workers_with_memory_broker_are_refused() -> None:
    """RELAY_WORKERS above 1 with memory:// is refused with a sentence that says to use Redis."""
    with pytest.raises(ConfigError, match="redis://"):
        load(RELAY_WORKERS="2")
    assert load(RELAY_WORKERS="2", RELAY_BROKER_URL="redis://127.0.0.1:6379/0").workers == 2


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "RELAY_JWT_SECRET"),
        ({"RELAY_JWT_SECRET": "short", "RELAY_PUBLISH_KEYS": STRONG + "p"}, "RELAY_JWT_SECRET"),
        ({"RELAY_JWT_SECRET": STRONG}, "RELAY_PUBLISH_KEYS"),
        ({"RELAY_JWT_SECRET": STRONG, "RELAY_PUBLISH_KEYS": "weak"}, "RELAY_PUBLISH_KEYS"),
        ({"RELAY_JWT_SECRET": STRONG, "RELAY_PUBLISH_KEYS": STRONG}, "RELAY_PUBLISH_KEYS"),
    ],
)
def test_production_refuses_missing_or_weak_secrets(env: dict[str, str], name: str) -> None:
    """RELAY_ENV=production never generates secrets and refuses weak ones."""
    with pytest.raises(ConfigError) as exc:
        load(RELAY_ENV="production", **env)
    assert str(exc.value).startswith(name)


def test_production_with_strong_secrets_starts() -> None:
    """Strong, distinct secrets are accepted in production and nothing is generated."""
    s = load(RELAY_ENV="production", RELAY_JWT_SECRET=STRONG, RELAY_PUBLISH_KEYS="p" * 40)
    assert s.production and not s.dev_secrets and s.jwt_keys == (("default", STRONG),)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    """A .env file supplies values; a real environment variable overrides it."""
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nRELAY_PORT=9001\nexport RELAY_JWT_AUDIENCE='aud-from-file'\nOTHER=1\n")
    s = load_settings({"RELAY_PORT": "9002"}, env_file=env_file)
    assert s.port == 9002 and s.jwt_audience == "aud-from-file"


def test_lists_and_key_sets_are_parsed() -> None:
    """Origins, publisher keys and kid:secret sets are split on commas."""
    s = load(
        RELAY_ALLOWED_ORIGINS="https://a.example/, https://b.example",
        RELAY_PUBLISH_KEYS="k1,k2",
        RELAY_JWT_SECRET=f"new:{STRONG},old:{STRONG}x",
    )
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.publish_keys == ("k1", "k2")
    assert [k for k, _ in s.jwt_keys] == ["new", "old"]


ROOT = Path(__file__).parent.parent


def env_example() -> dict[str, str]:
    """``RELAY_NAME`` -> the value written in .env.example."""
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^(RELAY_[A-Z0-9_]+)=(.*)$", text, re.MULTILINE))


def test_env_example_lists_every_setting_with_its_default() -> None:
    """Every declared setting is in .env.example with the same default, and .env.example lists nothing else."""
    declared = {d.spec.env: d.default_text for d in specs()}
    listed = env_example()
    missing = [f"{name}={text}" for name, text in declared.items() if name not in listed]
    assert not missing, f"declared in service/config.py, missing from .env.example: {missing}"
    assert sorted(listed.keys() - declared.keys()) == [], "in .env.example but not declared in service/config.py"
    differ = {name: (listed[name], text) for name, text in declared.items() if listed[name] != text}
    assert differ == {}, f".env.example default differs from the declaration, {{name: (example, declared)}}: {differ}"


def test_every_relay_variable_named_in_the_code_is_declared() -> None:
    """A RELAY_ name in a string of service/ or auth/ (a read, an error message; not a docstring) is declared."""
    declared = {d.spec.env for d in specs()}
    named: set[str] = set()
    for path in [*ROOT.joinpath("service").rglob("*.py"), *ROOT.joinpath("auth").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named |= set(re.findall(r"\b(RELAY_[A-Z0-9_]*[A-Z0-9])\b(?!_)", node.value))
    assert named, "the scan found nothing: the pattern is broken"
    assert sorted(named - declared) == []


def test_the_declared_defaults_are_what_loading_nothing_gives() -> None:
    """Loading an empty environment gives every declared default (secrets aside, which dev mode generates)."""
    loaded = load()
    for d in specs():
        if d.spec.env not in ("RELAY_PUBLISH_KEYS", "RELAY_SHUTDOWN_CLOSE_WINDOW"):
            assert getattr(loaded, d.attr) == getattr(DEFAULTS, d.attr) == d.default, d.spec.env
    assert loaded.shutdown_close_window == loaded.shutdown_timeout / 2


def _wrong_values() -> list[tuple[str, str]]:
    """One wrong value per declared setting that can be wrong on its own (type, range or choice)."""
    cases: list[tuple[str, str]] = []
    for d in specs():
        if d.kind is bool:
            cases.append((d.spec.env, "maybe"))
        elif d.kind is int or d.kind is float:
            cases.append((d.spec.env, "many"))
            if d.spec.high is not None:
                cases.append((d.spec.env, str(int(d.spec.high) + 1)))
            if d.spec.low is not None:
                cases.append((d.spec.env, str(int(d.spec.low) - 1)))
        elif d.spec.choices:
            cases.append((d.spec.env, "nonsense"))
    return cases


@pytest.mark.parametrize(("name", "value"), _wrong_values())
def test_every_declared_setting_refuses_a_wrong_value_naming_itself(name: str, value: str) -> None:
    """Type, range and choice errors are derived from the declaration: one sentence that starts with the name."""
    with pytest.raises(ConfigError) as exc:
        load(**{name: value})
    message = str(exc.value)
    assert message.startswith(name + " must be") and message.endswith(".") and "\n" not in message


def test_secrets_stay_out_of_the_repr() -> None:
    """repr(settings) (a log line, a traceback) shows neither the JWT secret nor the publisher keys."""
    s = load(RELAY_JWT_SECRET="jwt-secret-value-0123456789abcdef", RELAY_PUBLISH_KEYS="publisher-key-value")
    assert "jwt-secret-value" not in repr(s) and "publisher-key-value" not in repr(s) and "broker_url" in repr(s)


def test_redis_pool_and_timeouts_reach_the_broker() -> None:
    """RELAY_REDIS_* settings configure the Redis broker's pool size and timeouts (nothing is connected)."""
    s = load(
        RELAY_BROKER_URL="redis://127.0.0.1:1/0",
        RELAY_REDIS_MAX_CONNECTIONS="7",
        RELAY_REDIS_CONNECT_TIMEOUT="0.5",
        RELAY_REDIS_COMMAND_TIMEOUT="3",
        RELAY_REDIS_PING_TIMEOUT="0.25",
        RELAY_REDIS_KEEPALIVE_INTERVAL="2",
    )
    broker = broker_from_settings(s)
    assert isinstance(broker, RedisBroker)
    pool = broker._redis.connection_pool
    assert pool.max_connections == 7 and pool.timeout == 3.0
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.5
    assert pool.connection_kwargs["socket_timeout"] == 3.0
    assert (broker.connect_timeout, broker.ping_timeout, broker.keepalive_interval) == (0.5, 0.25, 2.0)
