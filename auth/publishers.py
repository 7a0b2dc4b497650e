"""Publisher keys: opaque bearer secrets for the internal API."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

__all__ = ["PublisherKeys"]


class PublisherKeys:
    """A set of accepted publisher keys, checked in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    def __len__(self) -> int:
        """How many keys are accepted."""
        return len(self._keys)

    def check(self, presented: str | None) -> bool:
        """Whether ``presented`` equals one of the keys.

        Every key is compared, whatever matched, so timing tells nothing about
        which key or how much of it matched.
        """
        if not presented:
            return False
        candidate = presented.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched
