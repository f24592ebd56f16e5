"""``tsh proxy ssh``: an OpenSSH ``ProxyCommand`` that reaches a node through the hub.

OpenSSH runs it with the SSH stream on our stdin/stdout; we relay those bytes,
unchanged in both directions, over the hub's ``/v1/connect`` websocket to the
node's SSH server. The SSH session (keys, host certificate check) stays end to
end between ``ssh`` and the device: this process sees ciphertext only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from remoteler.errors import NodeError, UsageError
from remoteler.identity import UserIdentity
from remoteler.resume.pipe import ResumablePipe
from remoteler.sshio import HIGH_WATER, BytePipe

#: After our stdin ends (ssh is done sending), how long the node may take to hang up.
EOF_GRACE = 5.0


def parse_target(target: str, cluster: str) -> tuple[str, str]:
    """``[login@]host[:port]`` as ssh's ``%r@%h:%p`` gives it -> (login, node).

    The port is ignored: a node has one SSH server. ``host`` may carry the
    cluster suffix (``truck-042.<cluster>``), which is stripped.
    """
    login, _, hostport = target.rpartition("@")
    host = hostport
    if hostport.startswith("["):  # [host]:port
        host = hostport[1:].partition("]")[0]
    elif hostport.count(":") == 1:
        host = hostport.partition(":")[0]
    if cluster and host.endswith("." + cluster):
        host = host[: -len(cluster) - 1]
    if not login or not host:
        raise UsageError("give the login and the node: tsh proxy ssh login@node[:port]")
    return login, host


async def _stdin_to_pipe(pipe: BytePipe) -> None:
    from tsh.ssh import stdin_chunks

    async for data in stdin_chunks(nonblocking=True):
        pipe.send(data)
        if pipe.buffered() > HIGH_WATER:
            await pipe.drain()


async def _pipe_to_stdout(pipe: BytePipe) -> int:
    """Copy the node's bytes to stdout until it hangs up; return how many were copied."""
    from tsh.ssh import write_all

    fd = sys.stdout.fileno()
    total = 0
    while data := await pipe.recv():
        total += len(data)
        try:
            await write_all(fd, data)
        except BrokenPipeError:
            return total  # ssh went away
    return total


async def proxy_ssh(hub: str, ident: UserIdentity, login: str, node: str) -> int:
    """Relay stdin/stdout to ``node``'s SSH server; return tsh's exit code.

    The stream under ssh's bytes is resumable when the device offers it
    (docs/resume.md): a broken link is dialled again and ssh never notices.
    """
    from tsh.resume import open_pipe
    from tsh.ssh import show_notice

    pipe, _ = await open_pipe(hub, ident, login, node, show_notice)  # OpenSSH shows our stderr
    upstream = asyncio.ensure_future(_stdin_to_pipe(pipe))
    downstream = asyncio.ensure_future(_pipe_to_stdout(pipe))
    try:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if downstream not in done:
            # ssh closed our stdin: it has nothing more to send, the node hangs up soon.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(downstream), EOF_GRACE)
        received = downstream.result() if downstream.done() else -1
    finally:
        for task in (upstream, downstream):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pipe.drain(), 2.0)
        pipe.close()
        if isinstance(pipe, ResumablePipe):
            pipe.end("the session ended")
    failure = getattr(pipe, "failure", None)
    if failure:
        raise NodeError(f"connection to {node!r} lost ({failure})")
    if received == 0:
        reason = getattr(pipe, "close_reason", "")
        raise NodeError(reason or f"the hub closed the connection to {node!r}")
    return 0
