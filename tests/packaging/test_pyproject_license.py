"""pyproject.toml's license is an SPDX string, with a setuptools that reads one.

The old TOML table form (``license = { text = ... }``) makes setuptools >= 77 print a
deprecation warning at every install; the string form needs setuptools >= 77 in the
build requirements, or an older setuptools refuses it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_license_is_an_spdx_string_and_setuptools_can_read_it() -> None:
    data = tomllib.loads(PYPROJECT.read_text())
    assert data["project"]["license"] == "Apache-2.0"
    requires = [Requirement(r) for r in data["build-system"]["requires"]]
    setuptools = next(r for r in requires if r.name == "setuptools")
    assert "76.9" not in setuptools.specifier and "77.0" in setuptools.specifier, setuptools
    assert not any(
        c.startswith("License ::") for c in data["project"].get("classifiers", [])
    )  # setuptools refuses a license classifier next to an SPDX expression
