"""The publish route served straight from the connection, past Sanic's routing and response objects.

``POST /internal/v1/executions/<execution_id>/events`` carries every event of
every execution: by far the relay's most frequent request. Over HTTP/1.1 the
connection hands each request to :func:`handle` instead of to
``Sanic.handle_request``; it serves that one route itself and passes every
other request to Sanic untouched (under ASGI, Sanic serves all of them).

What it leaves out is Sanic's generic machinery around a handler: the router
(a prefix and suffix match instead), the handler call chain, and the
response objects (the 202's bytes are written at once): about 740 of the
~3,000 bytecodes a publish ran (``bench/bytecodes.py``). What decides the
answer is the route's own code and Sanic's: the head was read and checked by
Sanic and :mod:`.hardening`, the key, body limit, validation and publish are
:func:`.routes.internal.accept_one` (the route runs the same function), an
error is answered by ``Sanic.handle_exception`` (the app's error handlers, as
for a routed request), and the 202 is byte for byte what Sanic writes for the
route (``tests/test_direct.py`` compares them over real sockets).

Sanic internals relied on, checked against Sanic 25.12.1
(``tests/test_direct.py::test_sanic_internals_keep_their_shape`` fails when
they move): the protocol's ``request_handler`` attribute, awaited by
``Http.http1`` with each request, after which ``Http.stage`` must be
``Stage.IDLE`` (an answer was written) for the connection to carry on;
``Http.keep_alive``, ``Http.response_func`` and ``Http._send``. A
``100 Continue`` needs nothing here: Sanic sends it when the body is first
read, and an accepted publish has read its body.
"""

from __future__ import annotations

from typing import Any

from sanic.http.constants import Stage

from .routes.internal import accept_one

__all__ = ["handle"]

_PREFIX = "/internal/v1/executions/"
_SUFFIX = "/events"
_START, _END = len(_PREFIX), -len(_SUFFIX)
#: The shortest path of the route: a one-character execution id.
_SHORTEST = len(_PREFIX) + 1 + len(_SUFFIX)


async def handle(request: Any) -> None:
    """Serve ``request``: a single-event publish here, anything else through ``Sanic.handle_request``."""
    path = request.path
    if request.method == "POST" and len(path) >= _SHORTEST and path.startswith(_PREFIX) and path.endswith(_SUFFIX):
        execution_id = path[_START:_END]
        if "/" not in execution_id:  # Sanic's <execution_id>: one non-empty path segment
            try:
                await _accepted(request, await accept_one(request, execution_id))
            except Exception as exc:  # a CancelledError is not one: Sanic's connection handles it
                # As Sanic's handle_request answers a handler's error (middleware: none here).
                await request.app.handle_exception(request, exc, run_middleware=False)
            return
    await request.app.handle_request(request)


async def _accepted(request: Any, text: str) -> None:
    """Write the 202 answer with JSON ``text``, as Sanic writes the route's ``JSONResponse``."""
    http = request.stream
    body = text.encode()
    data = (
        "HTTP/1.1 202 Accepted\r\n"
        f"x-request-id: {request.request_id}\r\n"
        f"content-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if http.keep_alive else 'close'}\r\n"
        "content-type: application/json\r\n\r\n"
    ).encode() + body
    request.log_access(202)
    http.response_func = None
    await http._send(data)
    http.stage = Stage.IDLE
