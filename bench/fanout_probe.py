"""Python work per socket of a fan-out, without sockets: the relay's path against websockets.broadcast().

The relay's side is the real one from the hub on: 1,000 subscriptions of one
execution on the memory broker, each writing through the real ``WsSink`` into
a Sanic-shaped socket that holds a real websockets ``ServerProtocol`` and a
transport whose ``write`` does nothing. ``--base`` runs
``websockets.broadcast()`` over 1,000 ``ServerConnection`` objects with the
same transports: baseline (c)'s fan-out. The ``write`` system call (most of a
socket's cost in the bench, the same for both) is left out, so what remains
is the difference the code makes.

Wall time is printed, but on a shared machine count instructions instead:
the probe switches callgrind's instrumentation on around the publishes only::

    valgrind --tool=callgrind --instr-atstart=no python bench/fanout_probe.py --cg [--base] [--deflate]

then read ``totals:`` of the last ``callgrind.out.<pid>.*`` dump and divide by
events x sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import uvloop


class NullTransport:
    """A transport that takes every write and never fills up."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def payload(i: int) -> dict[str, Any]:
    """A progress update like the bench's."""
    return {"progress": i % 100, "stage": "ai_fetching", "status": "processing", "status_text": "x" * 60}


def callgrind(args: argparse.Namespace, *command: str) -> None:
    if args.cg:
        subprocess.run(["callgrind_control", *command, str(os.getpid())], check=True, capture_output=True)


async def relay(args: argparse.Namespace) -> tuple[float, int]:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from service.brokers.memory import MemoryBroker
    from service.cursor import Cursor
    from service.events import parse_draft
    from service.hub import Hub
    from service.subscription import Subscription
    from service.web.routes.ws import WsSink
    from service.web.wsproto import _SharedContextDeflate

    class IoProtocol:
        def __init__(self) -> None:
            self.transport = NullTransport()

    class SanicSocket:
        """What WsSink reads of Sanic's WebsocketImplProtocol."""

        def __init__(self) -> None:
            self.ws_proto = ServerProtocol(state=State.OPEN)
            if args.deflate:
                self.ws_proto.extensions = [_SharedContextDeflate(15, 15, 64)]
            self.io_proto = IoProtocol()
            self.conn_mutex = asyncio.Lock()

        def end_connection(self, code: int, reason: str) -> None:
            raise AssertionError(f"closed with {code} {reason}")

    broker = MemoryBroker(history_size=100, history_ttl=3600)
    hub = Hub(broker)
    broker.set_listener(hub.dispatch, hub.resync)
    sockets = []
    for _ in range(args.subs):
        socket = SanicSocket()
        sub = Subscription(hub, broker, "probe", Cursor(), WsSink(socket), 256)  # type: ignore[arg-type]
        await sub.open()
        sub.start("{}")
        sockets.append(socket)
    drafts = [parse_draft("probe", {"event": "progress", "data": payload(i)}) for i in range(args.events + 5)]
    for draft in drafts[:5]:  # warm up
        await broker.publish(draft)
    callgrind(args, "-i", "on")
    started = time.perf_counter()
    for draft in drafts[5:]:
        await broker.publish(draft)
    elapsed = time.perf_counter() - started
    callgrind(args, "-i", "off")
    return elapsed, sum(s.io_proto.transport.writes for s in sockets)


async def base(args: argparse.Namespace) -> tuple[float, int]:
    from websockets.asyncio.server import ServerConnection, broadcast
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    connections = []
    for _ in range(args.subs):
        connection = ServerConnection(ServerProtocol(state=State.OPEN), server=None)  # type: ignore[arg-type]
        connection.transport = NullTransport()  # type: ignore[assignment]
        connections.append(connection)
    group = set(connections)
    messages = [
        json.dumps({"type": "diagnosis_update", "execution_id": "probe", "event": "progress", "data": payload(i)})
        for i in range(args.events + 5)
    ]
    for message in messages[:5]:
        broadcast(group, message)
    callgrind(args, "-i", "on")
    started = time.perf_counter()
    for message in messages[5:]:
        broadcast(group, message)
    elapsed = time.perf_counter() - started
    callgrind(args, "-i", "off")
    return elapsed, sum(c.transport.writes for c in connections)  # type: ignore[attr-defined]


async def main(args: argparse.Namespace) -> None:
    elapsed, writes = await (base(args) if args.base else relay(args))
    each = elapsed / args.events / args.subs * 1e6
    name = "websockets.broadcast" if args.base else "relay" + (" (deflate)" if args.deflate else "")
    print(f"{name}: {args.events} events x {args.subs} sockets, {writes} writes, {each:.2f} us per socket")
    callgrind(args, "-d")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--base", action="store_true", help="websockets.broadcast() instead of the relay")
    parser.add_argument("--deflate", action="store_true", help="relay sockets compress (shared-context deflate)")
    parser.add_argument("--cg", action="store_true", help="switch callgrind's instrumentation on around the publishes")
    uvloop.run(main(parser.parse_args()))
