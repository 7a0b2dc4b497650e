"""``RELAY_BROKER_URL`` for Redis: the three topologies parse, and wrong URLs are refused with a sentence."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ConnectionError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from service.brokers.redis_errors import PUBLISH, READ, classify, failure
from service.brokers.redis_url import parse_redis_url
from service.config import ConfigError
from tests.conftest import make_settings


def test_sentinel_url_names_sentinels_master_database_and_credentials() -> None:
    """``redis+sentinel://:pw@h1,h2:26380/mymaster/2``: Sentinels (default port 26379), master, db, password."""
    target = parse_redis_url("redis+sentinel://:s3cret@h1,h2:26380/mymaster/2?sentinel_password=other")
    assert (target.kind, target.tls, target.hosts) == ("sentinel", False, (("h1", 26379), ("h2", 26380)))
    assert (target.master, target.db, target.password, target.options) == (
        "mymaster",
        2,
        "s3cret",
        {"sentinel_password": "other"},
    )
    assert target.describe() == "redis+sentinel://h1:26379,h2:26380/mymaster/2"


def test_cluster_and_tls_urls() -> None:
    """``rediss+cluster://`` seeds with TLS options; ``redis://`` is one server with its database."""
    target = parse_redis_url("rediss+cluster://user:pw@n1:7000,[::1]:7001?ssl_cert_reqs=required")
    assert (target.kind, target.tls, target.hosts, target.username) == (
        "cluster",
        True,
        (("n1", 7000), ("::1", 7001)),
        "user",
    )
    assert target.connection_kwargs()["ssl_cert_reqs"] == "required" and "db" not in target.connection_kwargs()
    one = parse_redis_url("redis://:pw@127.0.0.1:6380/3")
    assert (one.kind, one.hosts, one.db, one.password) == ("standalone", (("127.0.0.1", 6380),), 3, "pw")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://127.0.0.1:7000/3", "names database 3, but a Redis Cluster has only database 0"),
        ("redis+sentinel://127.0.0.1:26379", "must name the monitored master"),
        ("redis://a:1,b:2/0", "use redis+sentinel:// for Sentinels or redis+cluster:// for a cluster"),
        ("redis://h:1/0?foo=1", "unknown option 'foo'"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h:1/x", "must end with a database number"),
        ("redis+cluster:///", "must name a host"),
        ("redis://h/0?sentinel_password=x", "only a redis+sentinel:// URL uses"),
        ("redis+shard://h", "RELAY_BROKER_URL must start with memory://, redis://"),
    ],
)
def test_wrong_urls_are_refused_with_a_sentence_naming_the_variable(url: str, message: str) -> None:
    """Each mistake stops the start with RELAY_BROKER_URL and what is wrong, never a traceback."""
    with pytest.raises(ConfigError, match="RELAY_BROKER_URL") as info:
        make_settings(RELAY_BROKER_URL=url)
    assert message in str(info.value)


def test_min_replicas_settings() -> None:
    """RELAY_REDIS_MIN_REPLICAS and its timeout are read and checked; they need a Redis broker."""
    settings = make_settings(
        RELAY_BROKER_URL="redis://h:1/0", RELAY_REDIS_MIN_REPLICAS="2", RELAY_REDIS_MIN_REPLICAS_TIMEOUT="1.5"
    )
    assert (settings.redis_min_replicas, settings.redis_min_replicas_timeout) == (2, 1.5)
    with pytest.raises(ConfigError, match="RELAY_REDIS_MIN_REPLICAS is above 0 but RELAY_BROKER_URL is not a Redis"):
        make_settings(RELAY_REDIS_MIN_REPLICAS="1")
    with pytest.raises(ConfigError, match="RELAY_REDIS_MIN_REPLICAS must be between 0 and 16"):
        make_settings(RELAY_BROKER_URL="redis://h:1/0", RELAY_REDIS_MIN_REPLICAS="-1")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (MovedError("3999 127.0.0.1:7001"), "moved"),
        (AskError("3999 127.0.0.1:7001"), "ask"),
        (TryAgainError("Multiple keys request during rehashing of slot"), "tryagain"),
        (ReadOnlyError("You can't write against a read only replica."), "readonly"),
        (ConnectionError("The previous master is now a slave"), "readonly"),
        (NoScriptError("No matching script."), "noscript"),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "oom"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "oom"),
        (AuthenticationError("invalid username-password pair"), "auth"),
        (ResponseError("NOAUTH Authentication required."), "auth"),
        (TimeoutError("Timeout reading from socket"), "timeout"),
        (ConnectionError("Error 111 connecting"), "connection"),
        (OSError("reset"), "connection"),
        (ResponseError("ERR something else"), "other"),
    ],
)
def test_errors_are_classified_by_what_they_are(error: Exception, kind: str) -> None:
    """MOVED/ASK, READONLY, NOSCRIPT, OOM, auth, timeout and connection failures each get their own kind."""
    assert classify(error) == kind


def test_publish_and_read_paths_say_different_things() -> None:
    """A publish says the event was not accepted; a read says history is unavailable; both name what Redis did."""
    publish = failure(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), PUBLISH)
    read = failure(ConnectionError("Error 111"), READ)
    assert publish.message == "Redis is out of memory (maxmemory reached); the event was not accepted, retry later"
    assert read.message == "the event broker (Redis) is unreachable; history unavailable, retry later"
    assert (publish.status, read.status) == (503, 503)
