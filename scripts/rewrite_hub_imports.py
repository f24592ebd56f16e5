"""Rewrite references to the hub's old flat module paths (issue 16, item 6).

``python scripts/rewrite_hub_imports.py [FILE...]`` rewrites, in place, every
``hub.OLD`` / ``hub/OLD.py`` reference and ``from hub import OLD`` line in the given
files (default: every tracked .py/.md/.toml/.sh/.txt file and .ci/run;
``tests/hub/test_X.py`` paths too) to the module's new home under
``hub/net``, ``hub/api``, ``hub/audit``, ``hub/auth``, ``hub/rotation``,
``hub/recording`` or ``hub/firmware``. Run it once on a branch made before the
move; running it twice would rewrite ``hub.auth`` (now a package) again.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

#: old module (under hub/) -> new dotted path (under hub/)
MOVES: dict[str, str] = {
    "admission": "net.admission",
    "dropcount": "net.dropcount",
    "identity": "net.identity",
    "listener": "net.listener",
    "sslbuffer": "net.sslbuffer",
    "tlswatch": "net.tlswatch",
    "wsguard": "net.wsguard",
    "wsutil": "net.wsutil",
    "drain_notice": "api.drain_notice",
    "linkprobe": "api.linkprobe",
    "node_status": "api.node_status",
    "server": "api.server",
    "sessioncap": "api.sessioncap",
    "tunnels": "api.tunnels",
    "audit_ingest": "audit.ingest",
    "audit_quota": "audit.quota",
    "auditbudget": "audit.budget",
    "auth": "auth.service",
    "hashgate": "auth.hashgate",
    "joinguard": "auth.joinguard",
    "locks": "auth.locks",
    "ratelimit": "auth.ratelimit",
    "roles": "auth.roles",
    "secrets": "auth.secrets",
    "rotation": "rotation.state",
    "rotation_runtime": "rotation.runtime",
    "recording": "recording.proxy",
    "recording_audit": "recording.audit",
    "recording_auth": "recording.auth",
    "recording_forward": "recording.forward",
    "recording_session": "recording.session",
    "firmware": "firmware.rollouts",
    "rollout_presence": "firmware.presence",
}

#: test modules moved to mirror them (tests/hub/NAME.py -> tests/hub/PKG/NAME.py)
TEST_MOVES: dict[str, str] = {
    "net": "test_admission test_dropcount test_listener test_listener_attack test_listener_logs "
    "test_sslbuffer test_tls_policy test_tlswatch test_ws_flood",
    "api": "test_drain_notice test_linkprobe test_node_status test_pong_compat "
    "test_server_hostile test_tunnel_hostile test_tunnel_sockets test_tunnels",
    "audit": "test_audit_ingest test_audit_quota",
    "auth": "test_auth test_hub_locks test_join_guard test_login_flood test_ratelimit "
    "test_role_options test_roles test_secrets",
    "rotation": "test_rotation_retry test_rotation_state",
    "recording": "test_cert_expiry_hub test_hub_recording test_recording_session test_session_cap",
    "firmware": "test_firmware_rollouts test_rollout_presence",
}
_TEST_PKG = {name: pkg for pkg, names in TEST_MOVES.items() for name in names.split()}

_NAMES = "|".join(sorted(MOVES, key=len, reverse=True))
#: ``from hub import X`` / ``from hub import X as Y``: one name per line
_FROM_HUB = re.compile(rf"^(\s*)from hub import ({_NAMES})(?: as (\w+))?(?=[ \t]*(?:#.*)?$)", re.M)
#: ``hub.X`` as a dotted path (not ``remoteler.hub.X``, a logger name)
_DOTTED = re.compile(rf"(?<![\w.])hub\.({_NAMES})(?![\w])")
#: an import line of a hub module: its dotted path is code, not a variable's attribute
_IMPORT = re.compile(r"^\s*(?:from|import) hub\.[\w.]+")
#: ``hub/X.py`` as a file path
_PATH = re.compile(rf"(?<![\w/.])hub/({_NAMES})\.py\b")
_TEST_NAMES = "|".join(sorted(_TEST_PKG, key=len, reverse=True))
#: ``tests/hub/test_X.py`` as a file path
_TEST_PATH = re.compile(rf"(?<![\w/.])tests/hub/({_TEST_NAMES})\.py\b")
SUFFIXES = (".py", ".md", ".toml", ".sh", ".cfg", ".txt")


def _from_hub(m: re.Match[str]) -> str:
    indent, old, alias = m.group(1), m.group(2), m.group(3)
    package, _, new = MOVES[old].rpartition(".")
    name = alias or old
    tail = "" if new == name else f" as {name}"
    return f"{indent}from hub.{package} import {new}{tail}"


def _dotted(text: str) -> str:
    return _DOTTED.sub(lambda m: f"hub.{MOVES[m.group(1)]}", text)


def _paths(text: str) -> str:
    text = _PATH.sub(lambda m: f"hub/{MOVES[m.group(1)].replace('.', '/')}.py", text)
    return _TEST_PATH.sub(lambda m: f"tests/hub/{_TEST_PKG[m.group(1)]}/{m.group(1)}.py", text)


def rewrite_text(text: str) -> str:
    """Prose (Markdown, shell, TOML): every dotted module path and file path."""
    return _paths(_dotted(text))


def rewrite_python(source: str) -> str:
    """Python: import lines, strings and comments; never code such as ``hub.auth``
    where ``hub`` is a variable (a fixture, a running hub's object)."""
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []  # (row, col) spans, 1-based rows
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for tok in tokens:
        if tok.type in (tokenize.STRING, tokenize.COMMENT):
            new = _paths(_dotted(tok.string))
            if new != tok.string:
                edits.append((*tok.start, *tok.end, new))
    for srow, scol, erow, ecol, new in reversed(edits):
        head = lines[srow - 1][:scol]
        tail = lines[erow - 1][ecol:]
        lines[srow - 1 : erow] = [head + new + tail]
    out = []
    for line in "".join(lines).splitlines(keepends=True):
        replaced = _FROM_HUB.sub(_from_hub, line)
        if replaced == line and _IMPORT.match(line):
            code, hash_, comment = line.partition("#")
            replaced = _dotted(code) + hash_ + comment
        out.append(replaced)
    return "".join(out)


def main(argv: list[str]) -> int:
    if argv:
        files = [Path(a) for a in argv]
    else:
        out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True)
        names = out.stdout.splitlines()
        files = [Path(p) for p in names if p.endswith(SUFFIXES) or p in (".ci/run", "Makefile")]
    for path in files:
        if path.name == Path(__file__).name:
            continue
        old = path.read_text()
        new = rewrite_python(old) if path.suffix == ".py" else rewrite_text(old)
        if new != old:
            path.write_text(new)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
