"""A small Dockerfile checker for when hadolint is not installed (and on top of it).

It checks what matters for Dockerfile.edge: valid instructions, FROM first, every
base image pinned by a tag (no ``latest``), no ``ADD`` of URLs, a non-root
``USER`` before ``CMD``/``ENTRYPOINT`` in the final stage, a ``HEALTHCHECK`` and
a ``VOLUME`` there, no compilers installed into the final stage, and no
architecture-specific names (a multi-arch build runs the same file everywhere).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip
ARCH = re.compile(r"\b(amd64|x86_64|aarch64|arm64|armv7l?|armhf|i386)\b")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cargo|rustc)\b")


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and directives dropped."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        name, _, args = full.partition(" ")
        out.append(Instruction(start, name.upper(), args.strip()))
    if pending:
        raise ValueError("the file ends inside a continued instruction")
    return out


def problems(text: str) -> list[str]:
    """Every rule broken by ``text`` (empty: fine)."""
    try:
        instrs = parse(text)
    except ValueError as err:
        return [str(err)]
    found: list[str] = []
    for ins in instrs:
        if ins.name not in INSTRUCTIONS:
            found.append(f"line {ins.line}: unknown instruction {ins.name}")
    first = next((i for i in instrs if i.name != "ARG"), None)
    if first is None or first.name != "FROM":
        found.append("the first instruction (after ARGs) must be FROM")
    args = {}
    for ins in instrs:
        if ins.name != "ARG":
            break
        key, _, value = ins.args.partition("=")
        args[key] = value
    stages = [i for i, ins in enumerate(instrs) if ins.name == "FROM"]
    for i in stages:
        words = instrs[i].args.split()
        image = next(w for w in words if not w.startswith("--"))
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), image)
        if "@sha256:" not in image and (":" not in image or image.endswith(":latest")):
            found.append(f"line {instrs[i].line}: base image {image!r} is not pinned by a tag")
    for ins in instrs:
        if ins.name == "ADD" and re.search(r"\b(https?|ftp)://", ins.args):
            found.append(f"line {ins.line}: ADD of a URL (download in a RUN, check a sum)")
        if ins.name in ("FROM", "RUN", "ADD", "COPY") and ARCH.search(ins.args):
            found.append(f"line {ins.line}: architecture-specific name (breaks multi-arch)")
    final = instrs[stages[-1] :] if stages else []
    user = None
    for ins in final:
        if ins.name == "USER":
            user = ins.args.split(":")[0]
        if ins.name in ("CMD", "ENTRYPOINT") and user in (None, "root", "0"):
            found.append(f"line {ins.line}: {ins.name} before a non-root USER")
        if ins.name == "RUN" and "install" in ins.args and COMPILERS.search(ins.args):
            found.append(f"line {ins.line}: build tools installed into the final image")
    names = {ins.name for ins in final}
    for needed in ("HEALTHCHECK", "VOLUME", "USER"):
        if needed not in names:
            found.append(f"the final stage has no {needed}")
    for ins in final:
        words = ins.args.upper().split()
        if ins.name == "HEALTHCHECK" and words != ["NONE"] and "CMD" not in words:
            found.append(f"line {ins.line}: HEALTHCHECK without CMD")
    return found
