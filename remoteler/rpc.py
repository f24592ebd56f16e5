"""Request/response RPC over a websocket: msgpack maps, one request per message.

Request ``{"id": int, "method": str, "params": map}``; response
``{"id": int, "result": any}`` or ``{"id": int, "error": {"code": str, "message": str}}``.
Error messages are one line for a person; they never carry secrets or internals.
"""

from __future__ import annotations

import itertools
from typing import Any, Final

import msgpack

from remoteler.errors import RemotelerError, error_from_code
from remoteler.protocol import RPC_SUBPROTOCOL

MAX_RPC_MESSAGE = 1 << 20
#: Responses can be larger (a node list of a big fleet): the client accepts up to this.
MAX_RPC_RESPONSE = 64 << 20
#: ``/v1/rpc``'s websocket subprotocol (defined in remoteler/protocol.py)
SUBPROTOCOL: Final = RPC_SUBPROTOCOL


class RpcFormatError(ValueError):
    """A peer sent something that is not an RPC message."""


def encode(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def decode(data: bytes | str, limit: int = MAX_RPC_MESSAGE) -> dict[str, Any]:
    if isinstance(data, str) or len(data) > limit:
        raise RpcFormatError("expected one binary msgpack map")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise RpcFormatError("malformed msgpack") from exc
    if not isinstance(obj, dict):
        raise RpcFormatError("expected a map")
    return obj


def parse_request(data: bytes | str) -> tuple[int, str, dict[str, Any]]:
    obj = decode(data)
    req_id, method, params = obj.get("id"), obj.get("method"), obj.get("params", {})
    if (
        not isinstance(req_id, int)
        or isinstance(req_id, bool)
        or not isinstance(method, str)
        or not isinstance(params, dict)
    ):
        raise RpcFormatError("request needs id:int, method:str, params:map")
    return req_id, method, params


def result_message(req_id: int, result: Any) -> bytes:
    return encode({"id": req_id, "result": result})


def error_message(req_id: int, err: RemotelerError) -> bytes:
    return encode({"id": req_id, "error": {"code": err.code, "message": err.message}})


class RpcClient:
    """Call methods over an open websockets connection, one at a time."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> Any:
        req_id = next(self._ids)
        await self._ws.send(encode({"id": req_id, "method": method, "params": params}))
        obj = decode(await self._ws.recv(), MAX_RPC_RESPONSE)
        if obj.get("id") != req_id:
            raise RpcFormatError("response id does not match the request")
        if "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            raise error_from_code(str(err.get("code", "error")), str(err.get("message", "error")))
        return obj.get("result")
