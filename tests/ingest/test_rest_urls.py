"""A FHIR server's credentials are a token or SMART keys, never a user name and password in its URL: such a URL is
refused before any request, and no message (nor the ingest CLI's output) quotes the password."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from careloop.cli import app as cli
from careloop.errors import ConfigError
from careloop.ingest.rest import RestSource, _Session

SECRET = "s3cretPw"


@pytest.mark.parametrize("field", ["base_url", "token_url"])
@pytest.mark.parametrize("userinfo", [f"ingest:{SECRET}", SECRET])
def test_a_url_with_a_user_or_password_is_refused_without_quoting_it(field, userinfo):
    urls = {"base_url": "https://fhir.example.org/r4", "token_url": "https://auth.example.org/token"}
    scheme, rest = urls[field].split("://")
    urls[field] = f"{scheme}://{userinfo}@{rest}"
    with pytest.raises(ConfigError, match=f"{field} must not carry a user name or password") as err:
        RestSource(**urls, token="t")
    assert SECRET not in str(err.value) and "ingest" not in str(err.value)


def test_the_cli_refuses_it_in_one_line_and_never_prints_the_password(tmp_path):
    res = CliRunner().invoke(cli, ["ingest", f"https://ingest:{SECRET}@127.0.0.1:1/fhir", "--store",
                                   str(tmp_path / "store"), "--token", "t"])
    assert res.exit_code != 0 and SECRET not in res.output and "Traceback" not in res.output, res.output
    assert "user name or password" in res.output


def test_a_link_the_server_sends_with_a_password_is_shown_without_it():
    source = RestSource("https://fhir.example.org/r4", token="t")
    with httpx.Client() as client:
        shown = _Session(source, client).display(
            f"https://other:{SECRET}@fhir.example.org:8443/r4/Patient?_count=5&access_token=abc")
    assert SECRET not in shown and "abc" not in shown and "fhir.example.org:8443/r4/Patient" in shown
