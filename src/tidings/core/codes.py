"""WebSocket close codes: RFC 6455's, and the ones tidings sends in 4000-4999 (the
application range), which clients act on (docs/protocol.md)."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """The close codes tidings sends or names (RFC 6455 section 7.4.1, the IANA registry, and
    tidings' own). 1005, 1006 and 1015 are never sent on the wire."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015
    #: the token is missing, invalid or expired
    UNAUTHORIZED = 4401
    #: the handshake's Origin is not allowed
    FORBIDDEN = 4403
    #: no ``authenticate`` frame within the auth timeout
    AUTH_TIMEOUT = 4408
    #: the user holds the most sockets allowed across the cluster
    TOO_MANY_CONNECTIONS = 4429


#: codes that never appear in a close frame (RFC 6455 section 7.4.1)
_NOT_ON_THE_WIRE = frozenset({CloseCode.NO_STATUS, CloseCode.ABNORMAL, CloseCode.TLS_HANDSHAKE})


def valid_close_code(code: int) -> bool:
    """Whether a server may send ``code`` in a close frame: a registered code that may appear
    on the wire (not 1010, the client's: a server cannot miss an extension it would have had to
    negotiate itself), or one of the 3000-4999 range for libraries and applications."""
    if 3000 <= code <= 4999:
        return True
    return 1000 <= code < 3000 and code in _ON_THE_WIRE


_ON_THE_WIRE = frozenset(
    code
    for code in CloseCode
    if code < 3000 and code not in _NOT_ON_THE_WIRE and code != CloseCode.MANDATORY_EXTENSION
)
