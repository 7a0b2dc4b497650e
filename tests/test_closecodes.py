"""The disconnect table: one value per way a stream ends, and the JSON copy the JavaScript tests read."""

from __future__ import annotations

import json
from pathlib import Path

from service import closecodes
from service.closecodes import DISCONNECTS, CloseCode, disconnect_table

JSON_COPY = Path(__file__).resolve().parent.parent / "clients" / "js" / "test" / "support" / "disconnects.json"


def test_the_json_copy_for_the_javascript_tests_matches_the_table() -> None:
    """clients/js/test/support/disconnects.json is the table; regenerate it with `python -m service.closecodes`."""
    assert json.loads(JSON_COPY.read_text()) == disconnect_table(), (
        "the disconnect table changed: run `.venv/bin/python -m service.closecodes > "
        "clients/js/test/support/disconnects.json`"
    )


def test_reconnect_advice_follows_the_contracts_ranges() -> None:
    """4000-4499 reconnect, 4500-4999 stop, 1000 and 1008/1009 stop, 1001/1011/1012 reconnect."""
    for d in DISCONNECTS.values():
        if 4000 <= d.code <= 4499:
            assert d.reconnect, d
        elif 4500 <= d.code <= 4999:
            assert not d.reconnect, d
    for code, reconnect in ((1000, False), (1001, True), (1008, False), (1009, False), (1011, True), (1012, True)):
        assert {d.reconnect for d in DISCONNECTS.values() if d.code == code} == {reconnect}, code


def test_every_name_is_exported_once_and_every_code_is_used() -> None:
    """Each disconnect is a module constant of its own name, and each close code has at least one disconnect."""
    for name, d in DISCONNECTS.items():
        assert d.name == name and getattr(closecodes, name) is d
    assert {d.code for d in DISCONNECTS.values()} == set(CloseCode)


def test_a_specific_reason_keeps_the_code_and_fits_a_close_frame() -> None:
    """because() keeps code and advice and cuts the reason to the 123 bytes a close frame allows."""
    long = closecodes.BAD_CURSOR.because("é" * 100)
    assert (long.code, long.reconnect, long.name) == (1008, False, "BAD_CURSOR")
    assert len(long.reason.encode()) <= 123 and long.reason.startswith("é")
