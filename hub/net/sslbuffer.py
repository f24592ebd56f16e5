"""One TLS read buffer for all of the hub's connections instead of one each.

asyncio's SSLProtocol gives every TLS connection its own buffer for the raw
bytes read from the socket (``max_size``, 256 KiB; 32 KiB when shrunk): for
10,000 idle agents that is 2.5 GiB (or 312 MiB) of buffers that are only used
for the instant between ``recv_into`` and the copy into OpenSSL's memory BIO,
both done in the same event-loop callback (``get_buffer`` then
``buffer_updated``). One buffer shared by all connections on the loop is
therefore safe, and it keeps the full 256 KiB read size for bulk relays.

This patches private CPython attributes (3.11-3.13); when they are not there,
nothing is changed and :func:`share_ssl_read_buffer` returns False.
"""

from __future__ import annotations

from typing import Any

READ_SIZE = 256 * 1024


def share_ssl_read_buffer(size: int = READ_SIZE) -> bool:
    """Make every asyncio TLS connection in this process read into one buffer."""
    from asyncio import sslproto

    cls: Any = sslproto.SSLProtocol
    if getattr(cls, "_remoteler_shared_buffer", False):
        return True
    if not (hasattr(cls, "get_buffer") and hasattr(cls, "buffer_updated")):
        return False
    original_init = cls.__init__
    shared = bytearray(size)
    view = memoryview(shared)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)  # allocates a 1-byte buffer (class max_size)
        self.max_size = size
        self._ssl_buffer = shared
        self._ssl_buffer_view = view

    def get_buffer(self: Any, n: int) -> memoryview:
        return view

    cls.max_size = 1
    cls.__init__ = __init__
    cls.get_buffer = get_buffer
    cls._remoteler_shared_buffer = True
    return True
