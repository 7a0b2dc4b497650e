"""The Sanic edge: everything that knows about Sanic, and nothing else does.

The core (``service/*.py``, ``service/brokers``, ``service/ingest``, ``auth``)
imports no Sanic; this package translates between HTTP/WebSocket and it:
``app.py`` (the app factory), ``routes/`` (the endpoints), ``http.py`` (their
helpers), ``wsproto.py`` (the WebSocket protocol extension), ``hardening.py``
(the HTTP/1.1 connection), ``shutdown.py`` (the graceful drain).
``tests/test_imports.py`` checks that no module outside this package imports
Sanic.
"""
