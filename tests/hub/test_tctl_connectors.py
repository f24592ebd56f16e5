"""tctl's side of connector documents (tctl/connectors.py): files named in the document
are read on the admin's machine, relative to the document; what get prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from remoteler.errors import UsageError
from tctl.connectors import to_toml, with_files


def test_secret_and_metadata_files_are_read_relative_to_the_document(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    meta = tmp_path / "meta" / "idp.xml"
    meta.parent.mkdir()
    meta.write_text("<EntityDescriptor/>")
    doc = {"kind": "saml", "client_secret_file": "secret", "idp_metadata_file": str(meta)}
    out = with_files(doc, tmp_path)
    assert out == {"kind": "saml", "client_secret": "s3cret", "idp_metadata": "<EntityDescriptor/>"}
    assert "client_secret_file" in doc  # the caller's document is left as it was


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("missing", "cannot read client_secret_file"),
        ("", "must be a file path"),
        (5, "must be a file path"),
    ],
)
def test_a_bad_secret_file_is_one_line(tmp_path: Path, value: object, needle: str) -> None:
    with pytest.raises(UsageError) as err:
        with_files({"client_secret_file": value}, tmp_path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_get_prints_toml_with_metadata_summarised() -> None:
    text = to_toml(
        {
            "kind": "saml",
            "name": "okta",
            "idp_metadata": "<x>" * 100,
            "attributes_to_roles": [{"name": "groups", "value": "ops", "roles": ["a"]}],
        }
    )
    assert 'kind = "saml"' in text
    assert "<300 characters of IdP metadata>" in text
    assert 'attributes_to_roles = [{ name = "groups", value = "ops", roles = ["a"] }]' in text
    import tomllib

    assert tomllib.loads(text)["name"] == "okta"
