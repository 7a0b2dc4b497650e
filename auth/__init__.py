"""Authentication for progress-relay: subscriber JWTs and publisher keys.

Free of Sanic: the service's edges call into it.
"""

from .publishers import PublisherKeys
from .tokens import (
    Claims,
    TokenError,
    TokenExpired,
    TokenForbidden,
    TokenInvalid,
    TokenMinter,
    TokenVerifier,
    MAX_TOKEN_BYTES,
)

__all__ = [
    "Claims",
    "MAX_TOKEN_BYTES",
    "PublisherKeys",
    "TokenError",
    "TokenExpired",
    "TokenForbidden",
    "TokenInvalid",
    "TokenMinter",
    "TokenVerifier",
]
