"""``RELAY_BROKER_URL`` for Redis, read into what the broker needs to connect.

Three topologies, each with a TLS variant (``rediss``)::

    redis://[[user]:password@]host:port[/db]                  one server
    redis+sentinel://[[user]:password@]h:p[,h:p...]/master[/db]  a primary managed by Sentinel
    redis+cluster://[[user]:password@]h:p[,h:p...]            a Redis Cluster (database 0 only)

The password (and user) is the data nodes'; Sentinels that need their own
take ``?sentinel_password=`` (choice). Sentinel ports default to 26379, the
others to 6379. The query may carry the TLS options listed in
:data:`QUERY_OPTIONS`. Nothing here imports redis-py, so the configuration
can check a URL without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

__all__ = ["QUERY_OPTIONS", "RedisTarget", "parse_redis_url"]

#: Query options understood in any Redis URL (TLS files and checks, the Sentinels' own password).
QUERY_OPTIONS = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
    "sentinel_password",
)

_KINDS = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
SCHEMES = tuple(_KINDS)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is and how to log in: one server, Sentinels and a master name, or cluster seed nodes."""

    kind: str  # "standalone", "sentinel" or "cluster"
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    master: str = ""  # sentinel: the monitored master's name
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for redis-py connections to the data nodes (credentials, database, TLS)."""
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.kind != "cluster":
            kwargs["db"] = self.db
        if self.tls:
            kwargs["ssl"] = True
            for name in QUERY_OPTIONS:
                if name.startswith("ssl_") and name in self.options:
                    value: Any = self.options[name]
                    if name == "ssl_check_hostname":
                        value = value.lower() in ("1", "true", "yes")
                    kwargs[name] = value
        return kwargs

    def describe(self) -> str:
        """The target without credentials, for logs."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        scheme = ("rediss" if self.tls else "redis") + ("" if self.kind == "standalone" else f"+{self.kind}")
        path = {"sentinel": f"/{self.master}/{self.db}", "cluster": ""}.get(self.kind, f"/{self.db}")
        return f"{scheme}://{hosts}{path}"


def parse_redis_url(url: str) -> RedisTarget:
    """Read a Redis broker URL; raise ValueError with a sentence saying what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _KINDS:
        raise ValueError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    kind, tls = _KINDS[scheme.lower()]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    default_port = 26379 if kind == "sentinel" else 6379
    hosts = tuple(_host(item, default_port) for item in hostlist.split(",") if item.strip())
    if not hosts:
        raise ValueError("must name a host")
    if kind == "standalone" and len(hosts) > 1:
        raise ValueError(
            f"names {len(hosts)} hosts, but {scheme}:// is one server; "
            "use redis+sentinel:// for Sentinels or redis+cluster:// for a cluster"
        )
    master, db = _path(kind, path)
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "db" and kind != "cluster":
            db = _database(value)
        elif name not in QUERY_OPTIONS:
            raise ValueError(f"has the unknown option {name!r} (known: {', '.join(QUERY_OPTIONS)})")
        else:
            options[name] = value
    if "sentinel_password" in options and kind != "sentinel":
        raise ValueError("has sentinel_password, which only a redis+sentinel:// URL uses")
    return RedisTarget(kind, tls, hosts, db, master, username, password, options)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, secret = userinfo.partition(":")
    if not colon:  # redis://secret@host: redis-py reads a lone userinfo as the password
        return None, unquote(user) or None
    return unquote(user) or None, unquote(secret)


def _path(kind: str, path: str) -> tuple[str, int]:
    """The master name (Sentinel) and the database number from the URL's path."""
    segments = [unquote(s) for s in path.split("/") if s]
    master = ""
    if kind == "sentinel":
        if not segments:
            raise ValueError(
                "must name the monitored master after the hosts, as redis+sentinel://h:p,h:p/<master>[/<db>]"
            )
        master, segments = segments[0], segments[1:]
    if len(segments) > 1:
        raise ValueError(f"has an unexpected path {path!r}")
    db = _database(segments[0]) if segments else 0
    if kind == "cluster" and db != 0:
        raise ValueError(f"names database {db}, but a Redis Cluster has only database 0")
    return master, db


def _database(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"must end with a database number, got {text!r}")
    return int(text)


def _host(item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, tail = item[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"has a host without a name in {item!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"has a bad port in {item!r}")
    return host, int(port_text)
