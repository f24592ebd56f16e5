"""tsh's session code connecting straight to a TCP port (no hub): the reference client."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.direct import connect_direct_tcp
from remoteler import malloc
from tsh.ssh import run_session


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identity", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cipher")
    parser.add_argument("target")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    login, _, node = args.target.rpartition("@")
    ciphers = [args.cipher] if args.cipher else None
    conn = await connect_direct_tcp(Path(args.identity), args.port, login, node, ciphers)
    try:
        return await run_session(conn, args.cmd, None)
    finally:
        conn.close()


if __name__ == "__main__":
    malloc.tune()  # as tsh and edge-agent do at start
    sys.exit(asyncio.run(main()))
