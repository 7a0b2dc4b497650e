"""The one cursor parser: what every transport accepts as a resume position."""

from __future__ import annotations

import pytest

from service.cursor import MAX_SEQ, Cursor, CursorError, parse_cursor, parse_last_event_id


def test_absent_or_empty_values_mean_no_cursor() -> None:
    """No seq and no epoch: everything retained, not resumed."""
    assert parse_cursor(None, None) == Cursor(0, None, False)
    assert parse_cursor("", "") == Cursor(0, None, False)
    assert parse_last_event_id(None) is None and parse_last_event_id("") is None


def test_plain_digits_up_to_the_javascript_safe_integer() -> None:
    """Leading zeros are fine; 2^53 - 1 is the largest seq."""
    assert parse_cursor("007", None) == Cursor(7, None, True)
    assert parse_cursor(str(MAX_SEQ), "E-1_x").seq == MAX_SEQ
    assert parse_cursor(None, "E") == Cursor(0, "E", True)  # an epoch alone: resumed from its start


@pytest.mark.parametrize("raw", ["-1", "+1", " 1", "1 ", "1_0", "1.0", "\u0663", "0x1", str(MAX_SEQ + 1), "9" * 5000])
def test_anything_else_is_refused_naming_the_field(raw: str) -> None:
    """Signs, spaces, separators, other digits and values past 2^53 - 1 are refused, never parsed loosely."""
    with pytest.raises(CursorError) as refused:
        parse_cursor(raw, None, "after")
    assert refused.value.field == "after" and refused.value.status == 422
    assert refused.value.body()["fields"] == [{"field": "after", "message": refused.value.fields[0]["message"]}]


@pytest.mark.parametrize("raw", ["a" * 33, "a b", "a:b", "a.b", "\u00e9"])
def test_epochs_are_1_to_32_url_safe_characters(raw: str) -> None:
    """An epoch outside A-Za-z0-9_- or longer than 32 is refused as ``epoch``."""
    with pytest.raises(CursorError) as refused:
        parse_cursor("1", raw)
    assert refused.value.field == "epoch"


def test_last_event_id_carries_epoch_and_seq_or_a_v1_seq() -> None:
    """``<epoch>:<seq>`` and ``<seq>``; HTTP's surrounding spaces are not part of the value."""
    assert parse_last_event_id("abc:12") == Cursor(12, "abc", True)
    assert parse_last_event_id("12") == Cursor(12, None, True)
    assert parse_last_event_id(" \tabc:0 ") == Cursor(0, "abc", True)
    for bad in (":1", "abc:", "a:b:1", "abc:x", "abc:-1", f"{'a' * 33}:1", str(MAX_SEQ + 1)):
        with pytest.raises(CursorError) as refused:
            parse_last_event_id(bad)
        assert refused.value.field == "Last-Event-ID", bad
