"""Sanic's HTTP/1.1 connection, hardened against hostile clients.

Everything here touches Sanic's private parts (checked against Sanic 25.12.1;
``tests/test_hardening.py`` fails loudly if they change shape):

- **A fixed deadline for the request head.** Sanic restarts its request timer
  on every byte received, so a head sent one byte at a time lives for ever.
  The protocol notes when a head starts (the connection was accepted, or the
  first byte of the next request on a kept-alive connection arrived) and
  times it from there, whatever arrives meanwhile (``RELAY_HANDSHAKE_TIMEOUT``).
- **Header field lines as HTTP/1.1 requires.** Sanic keeps a name with
  whitespace before the colon (``Transfer-Encoding : chunked``) as a
  different header, so a lenient proxy in front and the relay disagree on
  where a request ends (smuggling). Such a head, a bare CR or LF, a NUL or an
  obsolete line folding gets 400 (RFC 9112 sections 2.2 and 5.1).
- **A refused request leaves its body unread.** :func:`refuse_body` stops
  Sanic from answering ``100 Continue`` and from draining the body after the
  response; the connection closes instead (a lingering close: the relay
  half-closes, discards what still arrives for ``LINGER`` s, then closes, so
  the peer reads the answer instead of a reset).
- **No reference cycle left behind.** Sanic's ``Http`` keeps a bound method of
  itself in ``response_func`` (the next response's writer); once its request
  loop (``http1()``) ends, that is cleared, so a closed connection's ``Http``
  goes with its last reference instead of waiting for the cycle collector
  (``service/gcpolicy.py``).
"""

from __future__ import annotations

import re
import time
from typing import Any

from sanic.exceptions import BadRequest, SanicException
from sanic.http.http1 import Http
from sanic.request import Request

__all__ = ["LINGER", "RelayHttp", "head_problem", "refuse_body"]

#: Seconds a connection closed after a refused body is kept half-open, discarding input.
LINGER = 1.0

# The head as Sanic cuts it: request line, then field lines joined by CRLF, no final CRLF.
# Each field line must start with a token and a colon: no space before the colon, no
# folding, and no line that is not a field at all.
_BAD_FIELD_LINE = re.compile(rb"\r\n(?![!#$%&'*+.^_`|~0-9A-Za-z-]+:)")
#: The bytes allowed in a head only as CRLF (CR, LF), or not at all (NUL).
_CR_LF_NUL = b"\r\n\x00"


def head_problem(head: bytes) -> str | None:
    """Why ``head`` (request line and field lines, CRLF-separated) is refused, or None."""
    # CR only in CRLF, LF only after CR, and no NUL anywhere: the CRs, LFs and NULs (the bytes
    # translate() deletes) are exactly the CRLFs' two bytes each. Two passes in C, where three
    # counts and a `b"\x00" in head` took 7.6k instructions (callgrind; `in` with a bytes
    # operand first tries it as an int and formats a TypeError it then discards), and one regex
    # with a lookbehind tried every byte (5.5 % of a publish's CPU time, py-spy).
    if len(head) - len(head.translate(None, _CR_LF_NUL)) != 2 * head.count(b"\r\n"):
        return "a bare CR or LF, or a NUL, in the request head"
    if _BAD_FIELD_LINE.search(head):
        return "a malformed header field line (whitespace before the colon, folding, or no name)"
    return None


class RelayHttp(Http):
    """Sanic's HTTP/1.1 handler that times each request head from a fixed start and checks its lines."""

    __slots__ = ()

    def init_for_request(self) -> None:
        """Start a request cycle: the head's deadline runs from now if bytes of it are here already.

        On a new connection it runs from the accept (set by the protocol); on a kept-alive
        one from the first byte of the next request (the idle time before it is Sanic's
        keep-alive timeout, which no byte can extend: none arrives while idle).
        """
        super().init_for_request()  # type: ignore[no-untyped-call]  # Sanic's methods are untyped
        protocol: Any = self.protocol
        if protocol.served:
            protocol.head_started = time.monotonic() if self.recv_buffer else None

    async def http1(self) -> None:
        """Sanic's request loop; when it ends, forget the bound method of this object kept in ``response_func``.

        That method refers back to the object: a reference cycle that kept every
        closed connection's ``Http`` (with its ``request``) for the cycle collector.
        """
        try:
            await super().http1()  # type: ignore[no-untyped-call]
        finally:
            self.response_func = None  # type: ignore[assignment]  # Sanic sets None itself between responses

    async def http1_request_header(self) -> None:
        """Read and parse the head like Sanic, then refuse malformed field lines with 400."""
        try:
            await super().http1_request_header()  # type: ignore[no-untyped-call]
        except Exception as exc:
            if self.request is None:
                # A URL httptools cannot parse (a control byte in the path) fails where Sanic
                # builds the request, and again where it builds an empty request to answer the
                # error: an ERROR traceback and no answer. The answer is about "*" instead.
                self.url = None
                self.keep_alive = False
            if isinstance(exc, SanicException):
                raise
            raise BadRequest("Bad Request: the request target is not a valid URL") from None
        protocol: Any = self.protocol
        protocol.served = True
        protocol.head_started = None  # the head is complete: no head deadline until the next cycle
        problem = head_problem(self.request.head)
        if problem is not None:
            self.request_body = None  # never read (nor drain) the body of a refused request
            self.keep_alive = False
            raise BadRequest(f"Bad Request: {problem}")


def refuse_body(request: Request) -> None:
    """Answer ``request`` without reading its body: no ``100 Continue``, no drain, then close.

    For a request refused before its body was read (a missing publisher key).
    """
    stream: Any = request.stream
    if stream is None:
        return
    stream.expecting_continue = False
    if stream.request_body:
        stream.request_body = None
        stream.keep_alive = False  # the unread body would be parsed as the next request
        # Closing a socket with unread data resets it, which can destroy the response in
        # flight: the protocol half-closes instead and discards what still arrives, briefly.
        protocol = getattr(stream, "protocol", None)  # none under ASGI, where the server does this
        if protocol is not None and hasattr(protocol, "linger"):
            protocol.linger = True
