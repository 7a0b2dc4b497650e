"""The ``progress-relay`` command: serve, token, publish, demo, outbox."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import DEFAULTS, ConfigError, Settings, load_settings

__all__ = ["main"]

DEMO_EXECUTION = "demo-001"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = argparse.ArgumentParser(prog="progress-relay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="run the service (configured by RELAY_ variables / .env)")

    token = commands.add_parser("token", help="mint a subscriber token with the configured key")
    token.add_argument("--execution-id", required=True)
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default RELAY_TOKEN_TTL)")

    publish = commands.add_parser("publish", help="send one event to a running service")
    publish.add_argument("--execution-id", required=True)
    publish.add_argument("--event", required=True, choices=("progress", "result", "complete", "error"))
    publish.add_argument("--data", default="{}", help="the event's data as JSON")
    publish.add_argument("--idempotency-key", default=None)
    _client_args(publish)

    demo = commands.add_parser("demo", help="run a simulated diagnosis against a running service")
    demo.add_argument("--executions", type=int, default=1)
    demo.add_argument("--pace", type=float, default=1.0, help="seconds between steps")
    demo.add_argument("--execution-id", default=None, help="id of the (first) execution")
    _client_args(demo)

    outbox = commands.add_parser("outbox", help="the PostgreSQL outbox (docs/ingest.md)")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    init = outbox_commands.add_parser("init", help="print the outbox DDL, or run it with --apply")
    init.add_argument("--apply", action="store_true", help="run the DDL against the database instead of printing it")
    init.add_argument("--table", default=None, help="table name (default RELAY_OUTBOX_TABLE, else relay_outbox)")
    init.add_argument("--dsn", default=None, help="database for --apply (default RELAY_OUTBOX_DSN)")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve()
        if args.command == "outbox":
            return outbox_init(args)
        if args.command == "token":
            return mint(args)
        if args.command == "publish":
            return publish_one(args)
        return run_demo(args)
    except ConfigError as exc:
        print(f"progress-relay: {exc}", file=sys.stderr)
        return 2


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="service URL (default http://RELAY_HOST:RELAY_PORT)")
    parser.add_argument("--key", default=None, help="publisher key (default: first of RELAY_PUBLISH_KEYS)")


def _client(args: argparse.Namespace) -> tuple[str, str]:
    env = {**_env_file(), **os.environ}
    host = env.get("RELAY_HOST") or DEFAULTS.host
    url = args.url or f"http://{host}:{env.get('RELAY_PORT') or DEFAULTS.port}"
    key = args.key or (env.get("RELAY_PUBLISH_KEYS", "").split(",")[0].strip())
    if not key:
        raise ConfigError("RELAY_PUBLISH_KEYS is not set; pass --key with the key the service printed.")
    return url, key


def _env_file() -> dict[str, str]:
    from .config import read_env_file

    return read_env_file(".env")


def mint(args: argparse.Namespace) -> int:
    """Print a subscriber token signed with the configured key."""
    if (
        not os.environ.get("RELAY_JWT_SECRET")
        and not _env_file().get("RELAY_JWT_SECRET")
        and not os.environ.get("RELAY_JWT_PRIVATE_KEY")
        and not _env_file().get("RELAY_JWT_PRIVATE_KEY")
    ):
        raise ConfigError("RELAY_JWT_SECRET is not set, so a token minted here would not match any server's key.")
    settings = load_settings()
    from .relay import _minter

    minter = _minter(settings)
    if minter is None:
        raise ConfigError("RELAY_JWT_PRIVATE_KEY is needed to mint tokens with a public-key algorithm.")
    token, _expires_at = minter.mint(args.execution_id, args.sub, args.ttl or settings.token_ttl)
    print(token)
    return 0


def publish_one(args: argparse.Namespace) -> int:
    """Send one event and print the relay's answer."""
    from .publisher import PublishError, RelayPublisher

    url, key = _client(args)
    try:
        data = json.loads(args.data)
    except ValueError:
        print("progress-relay: --data is not valid JSON", file=sys.stderr)
        return 2
    try:
        result = RelayPublisher(url, key, retries=2).publish(args.execution_id, args.event, data, args.idempotency_key)
    except PublishError as exc:
        print(f"progress-relay: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def outbox_init(args: argparse.Namespace) -> int:
    """Print the outbox DDL, or run it against the database with ``--apply``."""
    from .config import OUTBOX_TABLE_RE

    env = {**_env_file(), **os.environ}
    table = args.table or env.get("RELAY_OUTBOX_TABLE", "").strip() or "relay_outbox"
    if not OUTBOX_TABLE_RE.fullmatch(table):
        raise ConfigError(f"the outbox table must be a lower-case [schema.]name of a-z0-9_, got {table!r}.")
    from .ingest.outbox import outbox_ddl

    ddl = outbox_ddl(table)
    if not args.apply:
        print(ddl, end="")
        return 0
    dsn = args.dsn or env.get("RELAY_OUTBOX_DSN", "").strip()
    if not dsn:
        raise ConfigError("RELAY_OUTBOX_DSN is not set; pass --dsn postgresql://... to apply the DDL.")
    import asyncio

    import asyncpg

    async def apply() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(ddl)
        finally:
            await conn.close()

    try:
        asyncio.run(apply())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"progress-relay: applying the outbox DDL failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"progress-relay: outbox {table} and {table}_dead are ready", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Run simulated diagnoses (see service.demo)."""
    from .demo import run

    url, key = _client(args)
    return run(url, key, executions=args.executions, pace=args.pace, first_id=args.execution_id)


def _banner(settings: Settings) -> str:
    from .relay import _minter

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    minter = _minter(settings)
    token = minter.mint(DEMO_EXECUTION, "demo-user", settings.token_ttl)[0] if minter else "(configure a key to mint)"
    key = settings.publish_keys[0]
    lines = [
        "",
        "progress-relay is running in DEV mode with throwaway secrets (set RELAY_JWT_SECRET and",
        "RELAY_PUBLISH_KEYS, or RELAY_ENV=production, to stop this). Try it:",
        "",
        f"  demo page         {base}/demo",
        f"  publisher key     {key}",
        f"  subscriber token  (execution {DEMO_EXECUTION}, valid {settings.token_ttl} s)",
        f"    {token}",
        "",
        "  1. watch (in another terminal):",
        f"     .venv/bin/python -m websockets 'ws://{host}:{settings.port}/ws/executions/{DEMO_EXECUTION}?token={token}'",
        "  2. publish:",
        f"     curl -s -X POST {base}/internal/v1/executions/{DEMO_EXECUTION}/events \\",
        f"          -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\",
        '          -d \'{"event":"progress","data":{"progress":50,"stage":"ai_fetching"}}\'',
        "  or run a whole simulated diagnosis:",
        f"     RELAY_PUBLISH_KEYS={key} RELAY_PORT={settings.port} .venv/bin/progress-relay demo"
        f" --execution-id {DEMO_EXECUTION}",
        "",
    ]
    return "\n".join(lines)


def serve() -> int:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    settings = load_settings()
    from .brokers import check_broker_url

    problem = check_broker_url(settings.broker_url)
    if problem:
        raise ConfigError(f"{problem}.")
    if settings.dev_secrets:
        # Workers re-read the environment: hand them the same throwaway secrets.
        os.environ["RELAY_JWT_SECRET"] = settings.jwt_keys[0][1]
        os.environ["RELAY_PUBLISH_KEYS"] = ",".join(settings.publish_keys)
        print(_banner(settings), file=sys.stderr, flush=True)
    from .web.serve import run

    run(settings)
    return 0
