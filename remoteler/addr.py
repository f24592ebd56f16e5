"""Parsing of ``HOST:PORT`` addresses and ``k=v`` label lists."""

from __future__ import annotations

import re

from remoteler.errors import UsageError

_LABEL_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,63}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.\-/:@+ ]{0,253}$")


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise :class:`UsageError` when malformed."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        close = text.index("]")
        host = text[1:close]
        rest = text[close + 1 :]
        if rest.startswith(":"):
            port_text, sep = rest[1:], ":"
        elif rest == "":
            port_text, sep = "", ""
        else:
            raise UsageError(f"bad address {text!r}: use HOST:PORT, e.g. 127.0.0.1:3080")
    elif not sep or ":" in host:
        host, port_text, sep = text, "", ""
    if not sep:
        if default_port is None:
            raise UsageError(f"bad address {text!r}: use HOST:PORT, e.g. 127.0.0.1:3080")
        return host or "127.0.0.1", default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"bad port in {text!r}: use HOST:PORT with a port from 0 to 65535")
    return host or "127.0.0.1", int(port_text)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_labels(text: str | None) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` into a dict; raise :class:`UsageError` naming the bad item."""
    labels: dict[str, str] = {}
    if not text:
        return labels
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise UsageError(
                f"bad label {item!r}: use key=value pairs separated by commas, "
                "e.g. env=prod,site=berlin"
            )
        labels[key] = value
    return labels


MAX_LABELS = 64


def parse_size(text: str) -> int:
    """``256MiB``, ``1GiB``, ``500KiB``, ``1048576`` (bytes)."""
    m = re.fullmatch(r"\s*(\d+)\s*(|B|KiB|MiB|GiB|K|M|G)\s*", text or "", re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"bad size {text!r}: use a number with KiB, MiB or GiB, e.g. 256MiB")
    unit = m.group(2).lower().rstrip("ib").rstrip("b")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def valid_labels(labels: object) -> bool:
    """True for a dict of at most 64 labels whose keys and values parse_labels accepts."""
    return (
        isinstance(labels, dict)
        and len(labels) <= MAX_LABELS
        and all(
            isinstance(k, str)
            and isinstance(v, str)
            and bool(_LABEL_KEY.fullmatch(k))
            and bool(_LABEL_VALUE.fullmatch(v))
            for k, v in labels.items()
        )
    )


def format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_ttl(text: str) -> int:
    """``90s``, ``15m``, ``8h``, ``2d`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"bad duration {text!r}: use a number with s, m, h or d, e.g. 8h")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
