"""Settings: every ``RELAY_`` variable, parsed and validated once at start.

This module mirrors ``.env.example``: one field per variable, same default.
A wrong value raises :class:`ConfigError` whose message is one sentence
naming the variable and what is wrong with it.
"""

from __future__ import annotations

import builtins
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ConfigError", "Settings", "load_settings", "read_env_file"]

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration of one progress-relay instance."""

    env: str = "dev"
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 1
    log_level: str = "INFO"
    access_log: bool = True

    broker_url: str = "memory://"
    redis_prefix: str = "relay"
    history_size: int = 1000
    history_ttl: int = 86400

    jwt_algorithm: str = "HS256"
    # (kid, secret-or-PEM) pairs; the first one signs minted tokens.
    jwt_keys: tuple[tuple[str, str], ...] = ()
    jwt_private_key: str = ""
    jwt_audience: str = "progress-relay"
    jwt_issuer: str = ""
    jwt_leeway: int = 10
    token_ttl: int = 3600
    token_max_ttl: int = 86400

    publish_keys: tuple[str, ...] = ()

    allowed_origins: tuple[str, ...] = ()
    heartbeat_interval: int = 30
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_max_message_size: int = 4096
    send_queue_size: int = 256
    max_body_size: int = 1048576
    max_batch_size: int = 1000
    max_connections: int = 50000
    max_connections_per_execution: int = 5000
    max_connections_per_sub: int = 20
    ws_max_frames_per_second: float = 10.0
    handshake_timeout: float = 10.0
    backlog: int = 1024
    ws_compression: bool = True
    ws_compression_min_size: int = 64
    ws_compression_context_takeover: bool = True

    # Hostile clients (issue 15).
    ws_max_frames_per_message: int = 16
    max_connections_per_ip: int = 1000

    # Addresses/CIDRs allowed to read /metrics; empty: any peer.
    metrics_allowlist: tuple[str, ...] = ()
    shutdown_timeout: float = 20.0
    shutdown_close_window: float = 10.0

    # True when secrets were generated because none were configured (dev only).
    dev_secrets: bool = field(default=False, compare=False)

    @property
    def production(self) -> bool:
        """Whether this instance runs with production safety checks."""
        return self.env == "production"

    @property
    def broker_scheme(self) -> str:
        """The URL scheme of the broker: ``memory``, ``redis`` or ``rediss``."""
        return urlsplit(self.broker_url).scheme


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``KEY=value`` lines of a ``.env`` file (``#`` comments, optional quotes)."""
    values: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return values
    for raw in p.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class _Reader:
    """Typed access to the RELAY_ variables, raising ConfigError with the name.

    The methods are named after the types they return, so inside the class body
    the annotations spell the built-in types as ``builtins.str`` and so on.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str, default: str) -> str:
        return self.env.get(name, default).strip() or default

    def int(self, name: builtins.str, default: builtins.int, low: builtins.int, high: builtins.int) -> builtins.int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}.") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}.")
        return value

    def float(
        self, name: builtins.str, default: builtins.float, low: builtins.float, high: builtins.float
    ) -> builtins.float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}.") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}.")
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}.")

    def choice(
        self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...], upper: builtins.bool = False
    ) -> builtins.str:
        value = self.str(name, default)
        value = value.upper() if upper else value.lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
        return value

    def list(self, name: builtins.str) -> tuple[builtins.str, ...]:
        raw = self.env.get(name, "")
        return tuple(item.strip() for item in raw.split(",") if item.strip())


def _keyed(name: str, items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Parse ``kid:value,kid:value``; a single item is the whole value (kid ``default``).

    A lone secret may itself contain ``:``, so only a list is split into kid and value.
    """
    if len(items) == 1:
        return (("default", items[0]),)
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        kid, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(f"{name} lists several keys, so each must be written kid:value.")
        kid, value = kid.strip(), value.strip()
        if not kid or not value:
            raise ConfigError(f"{name} item {i + 1} must be kid:value with both parts non-empty.")
        if any(kid == k for k, _ in pairs):
            raise ConfigError(f"{name} uses the kid {kid!r} twice.")
        pairs.append((kid, value))
    return tuple(pairs)


def _read_pem(name: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name} names {path!r}, which cannot be read ({exc.__class__.__name__}).") from None
    if "-----BEGIN" not in text:
        raise ConfigError(f"{name} names {path!r}, which is not a PEM file.")
    return text


def _check_broker_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return url
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ConfigError(f"RELAY_BROKER_URL must name a host, got {url.split('@')[-1]!r}.")
        return url
    raise ConfigError("RELAY_BROKER_URL must start with memory://, redis:// or rediss://.")


def _check_allowlist(items: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"RELAY_METRICS_ALLOWLIST item {item!r} is not an IP address or CIDR.") from None
    return items


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = ".env"
) -> Settings:
    """Build validated :class:`Settings` from the environment (and a ``.env`` file).

    Real environment variables win over the file. Raises :class:`ConfigError`.
    """
    merged: dict[str, str] = {}
    if env_file is not None:
        merged.update(read_env_file(env_file))
    merged.update({k: v for k, v in (os.environ if environ is None else environ).items() if k.startswith("RELAY_")})
    r = _Reader(merged)

    env = r.choice("RELAY_ENV", "dev", ("dev", "production"))
    algorithm = r.choice("RELAY_JWT_ALGORITHM", "HS256", HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS, upper=True)
    workers = r.int("RELAY_WORKERS", 1, 1, 64)
    broker_url = _check_broker_url(r.str("RELAY_BROKER_URL", "memory://"))
    if workers > 1 and broker_url.startswith("memory"):
        raise ConfigError(
            "RELAY_WORKERS is above 1 but RELAY_BROKER_URL is memory://, whose history lives in one "
            "process; set RELAY_BROKER_URL=redis://... to run several workers."
        )

    settings = Settings(
        env=env,
        host=r.str("RELAY_HOST", "127.0.0.1"),
        port=r.int("RELAY_PORT", 8765, 0, 65535),
        workers=workers,
        log_level=r.choice("RELAY_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True),
        access_log=r.bool("RELAY_ACCESS_LOG", True),
        broker_url=broker_url,
        redis_prefix=r.str("RELAY_REDIS_PREFIX", "relay"),
        history_size=r.int("RELAY_HISTORY_SIZE", 1000, 1, 1_000_000),
        history_ttl=r.int("RELAY_HISTORY_TTL", 86400, 1, 365 * 86400),
        jwt_algorithm=algorithm,
        jwt_audience=r.str("RELAY_JWT_AUDIENCE", "progress-relay"),
        jwt_issuer=r.str("RELAY_JWT_ISSUER", ""),
        jwt_leeway=r.int("RELAY_JWT_LEEWAY", 10, 0, 30),
        token_ttl=r.int("RELAY_TOKEN_TTL", 3600, 1, 30 * 86400),
        token_max_ttl=r.int("RELAY_TOKEN_MAX_TTL", 86400, 1, 30 * 86400),
        publish_keys=r.list("RELAY_PUBLISH_KEYS"),
        allowed_origins=tuple(o.rstrip("/") for o in r.list("RELAY_ALLOWED_ORIGINS")),
        heartbeat_interval=r.int("RELAY_HEARTBEAT_INTERVAL", 30, 1, 3600),
        ws_ping_interval=r.float("RELAY_WS_PING_INTERVAL", 20.0, 0.1, 3600),
        ws_ping_timeout=r.float("RELAY_WS_PING_TIMEOUT", 20.0, 0.1, 3600),
        ws_max_message_size=r.int("RELAY_WS_MAX_MESSAGE_SIZE", 4096, 64, 1 << 20),
        send_queue_size=r.int("RELAY_SEND_QUEUE_SIZE", 256, 1, 1_000_000),
        max_body_size=r.int("RELAY_MAX_BODY_SIZE", 1048576, 1024, 64 << 20),
        max_batch_size=r.int("RELAY_MAX_BATCH_SIZE", 1000, 1, 1000),
        max_connections=r.int("RELAY_MAX_CONNECTIONS", 50000, 1, 10_000_000),
        max_connections_per_execution=r.int("RELAY_MAX_CONNECTIONS_PER_EXECUTION", 5000, 1, 10_000_000),
        max_connections_per_sub=r.int("RELAY_MAX_CONNECTIONS_PER_SUB", 20, 1, 10_000_000),
        ws_max_frames_per_second=r.float("RELAY_WS_MAX_FRAMES_PER_SECOND", 10.0, 0.1, 100_000),
        handshake_timeout=r.float("RELAY_HANDSHAKE_TIMEOUT", 10.0, 0.1, 600),
        backlog=r.int("RELAY_BACKLOG", 1024, 1, 65535),
        ws_compression=r.bool("RELAY_WS_COMPRESSION", True),
        ws_compression_min_size=r.int("RELAY_WS_COMPRESSION_MIN_SIZE", 64, 0, 1 << 20),
        ws_compression_context_takeover=r.bool("RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER", True),
        metrics_allowlist=_check_allowlist(r.list("RELAY_METRICS_ALLOWLIST")),
        # Hostile clients (issue 15).
        ws_max_frames_per_message=r.int("RELAY_WS_MAX_FRAMES_PER_MESSAGE", 16, 1, 100_000),
        max_connections_per_ip=r.int("RELAY_MAX_CONNECTIONS_PER_IP", 1000, 0, 10_000_000),
        shutdown_timeout=r.float("RELAY_SHUTDOWN_TIMEOUT", 20.0, 1.0, 3600),
    )
    # Default: half the shutdown budget, leaving the rest for publishes and stragglers.
    window = r.float("RELAY_SHUTDOWN_CLOSE_WINDOW", settings.shutdown_timeout / 2, 0.0, 3600)
    settings = replace(settings, shutdown_close_window=window)
    if settings.shutdown_close_window >= settings.shutdown_timeout:
        raise ConfigError("RELAY_SHUTDOWN_CLOSE_WINDOW must be below RELAY_SHUTDOWN_TIMEOUT.")
    if settings.token_ttl > settings.token_max_ttl:
        raise ConfigError("RELAY_TOKEN_TTL must not exceed RELAY_TOKEN_MAX_TTL.")
    settings = _with_keys(settings, r)
    return _check_secrets(settings)


def _with_keys(settings: Settings, r: _Reader) -> Settings:
    if settings.jwt_algorithm in HMAC_ALGORITHMS:
        if r.str("RELAY_JWT_PUBLIC_KEYS", ""):
            raise ConfigError(
                f"RELAY_JWT_PUBLIC_KEYS is set but RELAY_JWT_ALGORITHM is {settings.jwt_algorithm}; "
                "HMAC and public-key algorithms are never mixed."
            )
        keys = _keyed("RELAY_JWT_SECRET", r.list("RELAY_JWT_SECRET"))
        return replace(settings, jwt_keys=keys)
    if r.str("RELAY_JWT_SECRET", ""):
        raise ConfigError(
            f"RELAY_JWT_SECRET is set but RELAY_JWT_ALGORITHM is {settings.jwt_algorithm}; "
            "HMAC and public-key algorithms are never mixed."
        )
    pairs = _keyed("RELAY_JWT_PUBLIC_KEYS", r.list("RELAY_JWT_PUBLIC_KEYS"))
    if not pairs:
        raise ConfigError(f"RELAY_JWT_PUBLIC_KEYS must name a PEM public key file for {settings.jwt_algorithm}.")
    keys = tuple((kid, _read_pem("RELAY_JWT_PUBLIC_KEYS", path)) for kid, path in pairs)
    private_path = r.str("RELAY_JWT_PRIVATE_KEY", "")
    private = _read_pem("RELAY_JWT_PRIVATE_KEY", private_path) if private_path else ""
    return replace(settings, jwt_keys=keys, jwt_private_key=private)


def _check_production_secrets(settings: Settings, hmac: bool) -> None:
    """Production runs only with secrets set by hand, long enough, and not shared."""
    if hmac and not settings.jwt_keys:
        raise ConfigError("RELAY_JWT_SECRET must be set when RELAY_ENV=production.")
    for kid, secret in settings.jwt_keys if hmac else ():
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"RELAY_JWT_SECRET key {kid!r} is {len(secret.encode())} bytes; production needs at least "
                f"{MIN_SECRET_BYTES}."
            )
    if not settings.publish_keys:
        raise ConfigError("RELAY_PUBLISH_KEYS must be set when RELAY_ENV=production.")
    for key in settings.publish_keys:
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(f"RELAY_PUBLISH_KEYS has a key shorter than {MIN_SECRET_BYTES} characters.")
    if hmac and any(key == secret for key in settings.publish_keys for _, secret in settings.jwt_keys):
        raise ConfigError("RELAY_PUBLISH_KEYS must not reuse the RELAY_JWT_SECRET.")


def _check_secrets(settings: Settings) -> Settings:
    hmac = settings.jwt_algorithm in HMAC_ALGORITHMS
    if settings.production:
        _check_production_secrets(settings, hmac)
        return settings
    generated = False
    if hmac and not settings.jwt_keys:
        settings = replace(settings, jwt_keys=(("default", secrets.token_urlsafe(32)),))
        generated = True
    if not settings.publish_keys:
        settings = replace(settings, publish_keys=(secrets.token_urlsafe(32),))
        generated = True
    return replace(settings, dev_secrets=generated)
