"""Configuration: parsed once, wrong values refused with a sentence naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, Settings, load_settings

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


def test_env_example_lists_every_setting() -> None:
    """Every RELAY_ variable the config module reads is listed in .env.example, and the reverse."""
    import re

    source = (Path(__file__).parent.parent / "service" / "config.py").read_text()
    read = set(re.findall(r'"(RELAY_[A-Z_]+)"', source))
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    listed = set(re.findall(r"^(RELAY_[A-Z_]+)=", example, re.MULTILINE))
    assert read - listed == set(), "read but not documented"
    assert listed - read == set(), "documented but never read"
