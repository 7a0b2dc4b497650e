"""Authentication for progress-relay: subscriber JWTs and publisher keys.

Free of Sanic: the service's edges call into it.
"""

from .publishers import PublisherKeys
from .tokens import (
    MAX_TOKEN_BYTES,
    Claims,
    TokenError,
    TokenExpired,
    TokenForbidden,
    TokenInvalid,
    TokenMinter,
    TokenVerifier,
)

__all__ = [
    "MAX_TOKEN_BYTES",
    "Claims",
    "PublisherKeys",
    "TokenError",
    "TokenExpired",
    "TokenForbidden",
    "TokenInvalid",
    "TokenMinter",
    "TokenVerifier",
]
