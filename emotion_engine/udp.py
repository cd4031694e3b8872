"""Reading what a UDP socket has queued into the rows of one preallocated buffer.

Both RTP readers of ``serve`` (the RTP port, ``server._RtpReader``, and the ports of
SIP calls, ``sip_server.SipServer``) read their sockets once per engine tick this way
and hand the rows to ``RtpIngest.receive_batch``: ``recvfrom_into`` writes each
datagram in place, so no bytes object is made per datagram.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
from numpy.typing import NDArray


def read_into_rows(
    sock: socket.socket, rows: NDArray[np.uint8]
) -> tuple[list[int], list[Any], OSError | None]:
    """Read the datagrams queued on the non-blocking ``sock`` into ``rows``
    (n_rows, stride) uint8, C-contiguous, one datagram per row from row 0, until none
    is left, the rows are full, or the socket raises another ``OSError`` (e.g. a
    queued ICMP error). Reading stops at that error, so one that stays cannot spin;
    it is returned, not raised, and the rest waits for the next read.

    Returns each datagram's size (at most the stride: a longer one is cut, as
    ``recvfrom(stride)`` cuts it), its sender's address, and the error or None.
    """
    view = rows.reshape(-1).data
    stride, capacity = rows.shape[1], rows.shape[0]
    recv_into = sock.recvfrom_into
    sizes: list[int] = []
    addrs: list[Any] = []
    while len(sizes) < capacity:
        n = len(sizes)
        try:
            size, addr = recv_into(view[n * stride : (n + 1) * stride])
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            return sizes, addrs, exc
        sizes.append(size)
        addrs.append(addr)
    return sizes, addrs, None
