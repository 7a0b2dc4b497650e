"""Settings: every ``RELAY_`` variable, declared once, parsed and validated once at start.

Each setting is one line of :class:`Settings`::

    history_size: int = setting("RELAY_HISTORY_SIZE", 1000, "Events kept per execution.", low=1, high=1_000_000)

That line is the only place its environment name, type (the annotation),
default, range (``low``/``high`` or ``choices``) and one-line doc are written.
Everything else is derived from it: :func:`load_settings` reads and checks the
variable, a wrong value raises :class:`ConfigError` whose message is one
sentence naming the variable, and ``tests/test_config.py`` compares every
declaration's name *and* default with ``.env.example`` both ways.

Adding a setting (``RELAY_AMQP_URL``, ``RELAY_OUTBOX_TABLE``, a new limit):

1. add one line to :class:`Settings` as above; supported types are ``str``,
   ``int``, ``float``, ``bool`` and ``tuple[str, ...]`` (a comma-separated
   list); ``choices=(...)`` restricts a ``str`` (all-uppercase choices make the
   value case-insensitive and uppercase, others lowercase); ``check=`` runs a
   ``(variable, value) -> value`` function after parsing (raise ConfigError);
   ``secret=True`` keeps the value out of ``repr``; ``default_from=`` computes
   the default from the other settings when the variable is empty (its
   ``.env.example`` line is then empty);
2. add ``RELAY_NAME=<default>`` with a comment to ``.env.example`` (the test
   says which line is missing or differs);
3. checks that span several settings go in :func:`_check_together`.

Values that are not per deployment (the contract's limits, protocol buffers)
are named constants at the end of this module, also in one place.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "DEFAULTS",
    "LONG_POLL_MAX_WAIT",
    "OUTBOX_TABLE_RE",
    "POLL_DEFAULT_LIMIT",
    "POLL_MAX_LIMIT",
    "REDIS_RECONNECT_MAX",
    "REDIS_RECONNECT_MIN",
    "SSE_RETRY_MS",
    "WS_WRITE_BUFFER_HIGH",
    "ConfigError",
    "Settings",
    "Spec",
    "load_settings",
    "read_env_file",
    "setting",
    "specs",
]

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
MIN_SECRET_BYTES = 32

T = TypeVar("T")
_SPEC = "relay_setting"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Spec:
    """How one ``RELAY_`` variable is read: everything but the default and type, which the field holds."""

    env: str
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[str, Any], Any] | None = None
    default_from: Callable[[Any], Any] | None = None


def setting(
    env: str,
    default: T,
    doc: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    check: Callable[[str, Any], Any] | None = None,
    default_from: Callable[[Any], Any] | None = None,
    secret: bool = False,
) -> T:
    """Declare one setting: a dataclass field of :class:`Settings` that knows its variable."""
    spec = Spec(env, doc, low, high, choices, check, default_from)
    # field() is typed as its default, so mypy sees a plain default value; dataclasses see the Field.
    return field(default=default, repr=not secret, metadata={_SPEC: spec})


def _broker_url(name: str, url: str) -> str:
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return url
    from .brokers.redis_url import SCHEMES, parse_redis_url

    if scheme not in SCHEMES:
        raise ConfigError(
            f"{name} must start with memory://, redis://, rediss://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster://."
        )
    try:
        parse_redis_url(url)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}.") from None
    return url


def _networks(name: str, items: tuple[str, ...]) -> tuple[str, ...]:
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{name} item {item!r} is not an IP address or CIDR.") from None
    return items


def _origins(name: str, items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(o.rstrip("/") for o in items)


# -- ingest (docs/ingest.md) --

_AMQP_QUEUE_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")
#: An outbox table name: lower case, optionally schema-qualified, with room for ``_dead``.
OUTBOX_TABLE_RE = re.compile(r"(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,57}")


def _without_password(url: str) -> str:
    """``url`` with any password replaced, for error messages."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)


def _url_of(schemes: tuple[str, ...]) -> Callable[[str, str], str]:
    """A check for an optional URL (empty: off) with one of ``schemes`` and a host."""

    def check(name: str, url: str) -> str:
        if not url:
            return url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError:
            raise ConfigError(f"{name} is not a valid URL: {_without_password(url)!r}.") from None
        if parts.scheme not in schemes:
            prefixes = " or ".join(s + "://" for s in schemes)
            raise ConfigError(f"{name} must start with {prefixes}, got {_without_password(url)!r}.")
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"{name} must name a host, got {_without_password(url)!r}.")
        return url

    return check


def _amqp_queue(name: str, queue: str) -> str:
    if not _AMQP_QUEUE_RE.fullmatch(queue) or queue.startswith("amq."):
        raise ConfigError(
            f"{name} must be 1-200 characters of A-Za-z0-9._:- and not start with amq. "
            f"(reserved by RabbitMQ), got {queue!r}."
        )
    return queue


def _outbox_table(name: str, table: str) -> str:
    if not OUTBOX_TABLE_RE.fullmatch(table):
        raise ConfigError(
            f"{name} must be a lower-case table name, optionally schema-qualified "
            f"([schema.]name of a-z0-9_, at most 58 characters, so that <name>_dead fits), got {table!r}."
        )
    return table


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration of one progress-relay instance (one line per ``RELAY_`` variable)."""

    # -- runtime
    env: str = setting(
        "RELAY_ENV",
        "dev",
        "dev or production (production refuses missing or weak secrets).",
        choices=("dev", "production"),
    )
    host: str = setting("RELAY_HOST", "127.0.0.1", "Address to listen on.")
    port: int = setting("RELAY_PORT", 8765, "TCP port to listen on.", low=0, high=65535)
    workers: int = setting("RELAY_WORKERS", 1, "Worker processes (above 1 needs a shared broker).", low=1, high=64)
    backlog: int = setting("RELAY_BACKLOG", 1024, "Pending TCP connections queued for accept().", low=1, high=65535)
    log_level: str = setting(
        "RELAY_LOG_LEVEL", "INFO", "Lowest log level written.", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    access_log: bool = setting("RELAY_ACCESS_LOG", True, "One log line per HTTP request.")

    # -- broker
    broker_url: str = setting(
        "RELAY_BROKER_URL",
        "memory://",
        "memory://, or a redis://, redis+sentinel:// or redis+cluster:// URL (rediss+ for TLS).",
        check=_broker_url,
    )
    redis_prefix: str = setting("RELAY_REDIS_PREFIX", "relay", "Prefix of every Redis key and channel.")
    redis_max_connections: int = setting(
        "RELAY_REDIS_MAX_CONNECTIONS",
        64,
        "Redis connections per process for commands (a burst waits for one).",
        low=1,
        high=10_000,
    )
    redis_connect_timeout: float = setting(
        "RELAY_REDIS_CONNECT_TIMEOUT", 2.0, "Seconds to open a Redis connection.", low=0.01, high=600
    )
    redis_command_timeout: float = setting(
        "RELAY_REDIS_COMMAND_TIMEOUT",
        5.0,
        "Seconds a Redis command (or a wait for a pooled connection) may take.",
        low=0.01,
        high=600,
    )
    redis_ping_timeout: float = setting(
        "RELAY_REDIS_PING_TIMEOUT",
        1.0,
        "Seconds the readiness PING may take before /readyz answers 503.",
        low=0.01,
        high=600,
    )
    redis_keepalive_interval: float = setting(
        "RELAY_REDIS_KEEPALIVE_INTERVAL",
        5.0,
        "Seconds of pub/sub silence before a PING (3x: reconnect).",
        low=0.01,
        high=3600,
    )
    # Redis topologies (issue 14): replicas that must have each publish before it is acknowledged.
    redis_min_replicas: int = setting(
        "RELAY_REDIS_MIN_REPLICAS",
        0,
        "Replicas that must have an event before its publish is acknowledged (WAIT); too few: 503.",
        low=0,
        high=16,
    )
    redis_min_replicas_timeout: float = setting(
        "RELAY_REDIS_MIN_REPLICAS_TIMEOUT",
        0.5,
        "Seconds to wait for RELAY_REDIS_MIN_REPLICAS replicas before answering 503.",
        low=0.001,
        high=60,
    )
    history_size: int = setting("RELAY_HISTORY_SIZE", 1000, "Events kept per execution.", low=1, high=1_000_000)
    history_ttl: int = setting(
        "RELAY_HISTORY_TTL", 86400, "Seconds history is kept after the last event.", low=1, high=365 * 86400
    )

    # -- subscriber tokens
    jwt_algorithm: str = setting(
        "RELAY_JWT_ALGORITHM",
        "HS256",
        "The one JWT algorithm accepted.",
        choices=HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS,
    )
    jwt_secret: tuple[str, ...] = setting(
        "RELAY_JWT_SECRET", (), "HMAC secret, or kid:secret,... for rotation.", secret=True
    )
    jwt_public_keys: tuple[str, ...] = setting(
        "RELAY_JWT_PUBLIC_KEYS", (), "RS256/ES256 public key file, or kid:path,..."
    )
    jwt_private_key_file: str = setting("RELAY_JWT_PRIVATE_KEY", "", "RS256/ES256 private key file (to mint here).")
    jwt_audience: str = setting("RELAY_JWT_AUDIENCE", "progress-relay", "Required aud claim.")
    jwt_issuer: str = setting("RELAY_JWT_ISSUER", "", "Required iss claim when set.")
    jwt_leeway: int = setting("RELAY_JWT_LEEWAY", 10, "Clock skew tolerated on exp/nbf/iat, seconds.", low=0, high=30)
    token_ttl: int = setting(
        "RELAY_TOKEN_TTL", 3600, "Lifetime of minted tokens without a ttl, seconds.", low=1, high=30 * 86400
    )
    token_max_ttl: int = setting(
        "RELAY_TOKEN_MAX_TTL", 86400, "Longest lifetime of a minted token, seconds.", low=1, high=30 * 86400
    )

    # -- publishers
    publish_keys: tuple[str, ...] = setting("RELAY_PUBLISH_KEYS", (), "Keys accepted on /internal.", secret=True)

    # -- public endpoints
    allowed_origins: tuple[str, ...] = setting(
        "RELAY_ALLOWED_ORIGINS", (), "Origins allowed (empty: any).", check=_origins
    )
    heartbeat_interval: int = setting(
        "RELAY_HEARTBEAT_INTERVAL",
        30,
        "Seconds between a client's app-level pings (told in connected).",
        low=1,
        high=3600,
    )
    ws_ping_interval: float = setting(
        "RELAY_WS_PING_INTERVAL", 20.0, "Seconds between protocol pings.", low=0.1, high=3600
    )
    ws_ping_timeout: float = setting(
        "RELAY_WS_PING_TIMEOUT", 20.0, "Seconds to wait for a protocol pong.", low=0.1, high=3600
    )
    ws_compression: bool = setting("RELAY_WS_COMPRESSION", True, "permessage-deflate for clients that offer it.")
    ws_compression_min_size: int = setting(
        "RELAY_WS_COMPRESSION_MIN_SIZE", 64, "Frames shorter than this go uncompressed.", low=0, high=1 << 20
    )
    ws_compression_context_takeover: bool = setting(
        "RELAY_WS_COMPRESSION_CONTEXT_TAKEOVER", True, "A compressed frame may refer back to the previous one."
    )
    ws_max_message_size: int = setting(
        "RELAY_WS_MAX_MESSAGE_SIZE", 4096, "Largest client frame, bytes.", low=64, high=1 << 20
    )
    send_queue_size: int = setting(
        "RELAY_SEND_QUEUE_SIZE", 256, "Events waiting per socket before 4008.", low=1, high=1_000_000
    )
    sse_keepalive_interval: float = setting(
        "RELAY_SSE_KEEPALIVE_INTERVAL",
        15.0,
        "Seconds between keepalive comments on an idle SSE stream.",
        low=0.01,
        high=3600,
    )
    max_body_size: int = setting(
        "RELAY_MAX_BODY_SIZE", 1048576, "Largest /internal request body, bytes.", low=1024, high=64 << 20
    )
    max_batch_size: int = setting("RELAY_MAX_BATCH_SIZE", 1000, "Most events in one batch.", low=1, high=1000)

    # -- limits
    max_connections: int = setting(
        "RELAY_MAX_CONNECTIONS", 50000, "Open WebSockets on this instance.", low=1, high=10_000_000
    )
    max_connections_per_execution: int = setting(
        "RELAY_MAX_CONNECTIONS_PER_EXECUTION", 5000, "Open WebSockets per execution.", low=1, high=10_000_000
    )
    max_connections_per_sub: int = setting(
        "RELAY_MAX_CONNECTIONS_PER_SUB", 20, "Open WebSockets per token sub.", low=1, high=10_000_000
    )
    ws_max_frames_per_second: float = setting(
        "RELAY_WS_MAX_FRAMES_PER_SECOND", 10.0, "Frames a client may send per second on average.", low=0.1, high=100_000
    )
    handshake_timeout: float = setting(
        "RELAY_HANDSHAKE_TIMEOUT", 10.0, "Seconds to send a complete request; idle keep-alive too.", low=0.1, high=600
    )
    ws_max_frames_per_message: int = setting(
        "RELAY_WS_MAX_FRAMES_PER_MESSAGE", 16, "Frames one client message may be split into.", low=1, high=100_000
    )
    max_connections_per_ip: int = setting(
        "RELAY_MAX_CONNECTIONS_PER_IP",
        1000,
        "Open TCP connections per client address (0: no cap).",
        low=0,
        high=10_000_000,
    )

    # -- operations
    metrics_allowlist: tuple[str, ...] = setting(
        "RELAY_METRICS_ALLOWLIST", (), "Addresses/CIDRs allowed to read /metrics (empty: any).", check=_networks
    )
    shutdown_timeout: float = setting(
        "RELAY_SHUTDOWN_TIMEOUT", 20.0, "Seconds from SIGTERM to exit.", low=1.0, high=3600
    )
    shutdown_close_window: float = setting(
        "RELAY_SHUTDOWN_CLOSE_WINDOW",
        10.0,
        "Seconds over which open sockets are closed (empty: half the timeout).",
        low=0.0,
        high=3600,
        default_from=lambda s: s.shutdown_timeout / 2,
    )

    # -- ingest from the scheduler's own infrastructure (docs/ingest.md); empty URL/DSN: off
    amqp_url: str = setting(
        "RELAY_AMQP_URL",
        "",
        "amqp:// or amqps:// URL to consume RELAY_AMQP_QUEUE from.",
        check=_url_of(("amqp", "amqps")),
        secret=True,
    )
    amqp_queue: str = setting(
        "RELAY_AMQP_QUEUE",
        "progress-relay.events",
        "Durable queue consumed; <queue>.dead gets refusals.",
        check=_amqp_queue,
    )
    amqp_prefetch: int = setting(
        "RELAY_AMQP_PREFETCH", 100, "Unacknowledged messages in hand (also the largest batch).", low=1, high=1000
    )
    outbox_dsn: str = setting(
        "RELAY_OUTBOX_DSN",
        "",
        "postgresql:// DSN to consume RELAY_OUTBOX_TABLE from.",
        check=_url_of(("postgres", "postgresql")),
        secret=True,
    )
    outbox_table: str = setting(
        "RELAY_OUTBOX_TABLE", "relay_outbox", "Outbox table; <table>_dead gets refusals.", check=_outbox_table
    )
    outbox_batch_size: int = setting("RELAY_OUTBOX_BATCH_SIZE", 500, "Rows published per batch.", low=1, high=1000)
    outbox_poll_interval: float = setting(
        "RELAY_OUTBOX_POLL_INTERVAL",
        1.0,
        "Seconds between polls without NOTIFY, and between standby lock attempts.",
        low=0.05,
        high=60,
    )
    outbox_hole_timeout: float = setting(
        "RELAY_OUTBOX_HOLE_TIMEOUT",
        10.0,
        "Seconds rows wait behind ids of a transaction still open.",
        low=0,
        high=3600,
    )

    # -- derived at load, not variables of their own
    # (kid, secret-or-PEM) pairs from RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEYS; the first one signs.
    jwt_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The PEM text of RELAY_JWT_PRIVATE_KEY.
    jwt_private_key: str = field(default="", repr=False)
    # True when secrets were generated because none were configured (dev only).
    dev_secrets: bool = field(default=False, compare=False)

    @property
    def production(self) -> bool:
        """Whether this instance runs with production safety checks."""
        return self.env == "production"

    @property
    def broker_scheme(self) -> str:
        """The URL scheme of the broker: ``memory``, ``redis``, ``rediss+sentinel``, ``redis+cluster``, ..."""
        return urlsplit(self.broker_url).scheme


@dataclass(frozen=True, slots=True)
class _Declared:
    """One declared setting: its field name, type, default and :class:`Spec`."""

    attr: str
    kind: Any
    default: Any
    spec: Spec

    @property
    def default_text(self) -> str:
        """The default as ``.env.example`` writes it (empty when computed from others)."""
        if self.spec.default_from is not None:
            return ""
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


def specs() -> tuple[_Declared, ...]:
    """Every declared setting, in declaration order."""
    hints = typing.get_type_hints(Settings)
    return tuple(
        _Declared(f.name, hints[f.name], f.default, f.metadata[_SPEC]) for f in fields(Settings) if _SPEC in f.metadata
    )


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


def _parse(declared: _Declared, raw: str) -> Any:
    """One variable's value from its text; an empty text is the default."""
    raw = raw.strip()
    if declared.kind is bool:
        return _parse_bool(declared, raw)
    if declared.kind is int or declared.kind is float:
        return _parse_number(declared, raw)
    if declared.kind == tuple[str, ...]:
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    value = raw or declared.default
    choices = declared.spec.choices
    if choices:
        value = value.upper() if all(c.isupper() for c in choices) else value.lower()
        if value not in choices:
            raise ConfigError(f"{declared.spec.env} must be one of {', '.join(choices)}, got {value!r}.")
    return value


def _parse_bool(declared: _Declared, raw: str) -> bool:
    if not raw:
        return bool(declared.default)
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{declared.spec.env} must be true or false, got {raw!r}.")


def _parse_number(declared: _Declared, raw: str) -> float:
    name, spec, kind = declared.spec.env, declared.spec, declared.kind
    if not raw:
        return float(declared.default) if kind is float else int(declared.default)
    try:
        number: float = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}.") from None
    low = -float("inf") if spec.low is None else spec.low
    high = float("inf") if spec.high is None else spec.high
    if not low <= number <= high:
        raise ConfigError(f"{name} must be between {spec.low} and {spec.high}, got {number}.")
    return number


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
    values: dict[str, Any] = {}
    later: list[_Declared] = []
    for declared in specs():
        raw = merged.get(declared.spec.env, "")
        if not raw.strip() and declared.spec.default_from is not None:
            later.append(declared)
            continue
        value = _parse(declared, raw)
        if declared.spec.check is not None:
            value = declared.spec.check(declared.spec.env, value)
        values[declared.attr] = value
    settings = Settings(**values)
    settings = replace(settings, **{d.attr: d.spec.default_from(settings) for d in later if d.spec.default_from})
    _check_together(settings)
    return _check_secrets(_with_keys(settings))


def _check_together(settings: Settings) -> None:
    """Checks that span several settings."""
    if settings.workers > 1 and settings.broker_scheme == "memory":
        raise ConfigError(
            "RELAY_WORKERS is above 1 but RELAY_BROKER_URL is memory://, whose history lives in one "
            "process; set RELAY_BROKER_URL=redis://... to run several workers."
        )
    if settings.shutdown_close_window >= settings.shutdown_timeout:
        raise ConfigError("RELAY_SHUTDOWN_CLOSE_WINDOW must be below RELAY_SHUTDOWN_TIMEOUT.")
    if settings.token_ttl > settings.token_max_ttl:
        raise ConfigError("RELAY_TOKEN_TTL must not exceed RELAY_TOKEN_MAX_TTL.")
    if settings.redis_min_replicas and not settings.broker_scheme.startswith("redis"):
        raise ConfigError("RELAY_REDIS_MIN_REPLICAS is above 0 but RELAY_BROKER_URL is not a Redis URL.")


def _with_keys(settings: Settings) -> Settings:
    """The verification keys (and the private key) from the variables of the configured algorithm."""
    if settings.jwt_algorithm in HMAC_ALGORITHMS:
        if settings.jwt_public_keys:
            raise ConfigError(
                f"RELAY_JWT_PUBLIC_KEYS is set but RELAY_JWT_ALGORITHM is {settings.jwt_algorithm}; "
                "HMAC and public-key algorithms are never mixed."
            )
        return replace(settings, jwt_keys=_keyed("RELAY_JWT_SECRET", settings.jwt_secret))
    if settings.jwt_secret:
        raise ConfigError(
            f"RELAY_JWT_SECRET is set but RELAY_JWT_ALGORITHM is {settings.jwt_algorithm}; "
            "HMAC and public-key algorithms are never mixed."
        )
    pairs = _keyed("RELAY_JWT_PUBLIC_KEYS", settings.jwt_public_keys)
    if not pairs:
        raise ConfigError(f"RELAY_JWT_PUBLIC_KEYS must name a PEM public key file for {settings.jwt_algorithm}.")
    keys = tuple((kid, _read_pem("RELAY_JWT_PUBLIC_KEYS", path)) for kid, path in pairs)
    path = settings.jwt_private_key_file
    private = _read_pem("RELAY_JWT_PRIVATE_KEY", path) if path else ""
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


#: Every setting at its default, for code built without loaded settings (tests, tools, bench).
DEFAULTS = Settings()

# -- fixed values: not per deployment, named here so that none hides in a module ------------

#: Longest ``wait`` of a long poll, in seconds (the contract's 0..30).
LONG_POLL_MAX_WAIT = 30
#: Events in one polling answer without ``limit``, and the most a ``limit`` may ask for.
POLL_DEFAULT_LIMIT = 100
POLL_MAX_LIMIT = 1000
#: Reconnection delay suggested to EventSource clients, in milliseconds.
SSE_RETRY_MS = 3000
#: Above this many bytes waiting in a socket's transport, frames queue instead (asyncio's default high-water mark).
WS_WRITE_BUFFER_HIGH = 64 * 1024
#: Backoff of the Redis pub/sub reconnect loop: first retry and ceiling, in seconds (jittered).
REDIS_RECONNECT_MIN = 0.1
REDIS_RECONNECT_MAX = 5.0
