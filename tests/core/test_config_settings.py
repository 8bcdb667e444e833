"""Settings from the environment: every list setting takes JSON or comma-separated values, and
every mistake is one line naming the variable with an example."""

from __future__ import annotations

import typing

import pytest

from tidings.config import Settings, load_settings
from tidings.errors import ConfigurationError


def _is_list(annotation: object) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(arg) is list for arg in typing.get_args(annotation))


LIST_FIELDS = sorted(
    name for name, field in Settings.model_fields.items() if _is_list(field.annotation)
)


def test_the_list_settings_are_found() -> None:
    assert {"allowed_origins", "service_algorithms", "jwt_algorithms"} <= set(LIST_FIELDS)


@pytest.mark.parametrize("field", LIST_FIELDS)
@pytest.mark.parametrize("value", ["RS256,ES256", " RS256 , ES256, ", '["RS256", "ES256"]'])
def test_every_list_setting_takes_json_or_commas(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"TIDINGS_{field.upper()}", value)
    assert getattr(load_settings(), field) == ["RS256", "ES256"]


@pytest.mark.parametrize("field", LIST_FIELDS)
def test_an_empty_list_setting_is_its_default(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    monkeypatch.setenv(f"TIDINGS_{field.upper()}", "")
    default = Settings.model_fields[field].get_default(call_default_factory=True)
    assert getattr(load_settings(), field) == default


@pytest.mark.parametrize("field", LIST_FIELDS)
def test_a_bad_list_names_the_variable_and_an_example(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    variable = f"TIDINGS_{field.upper()}"
    monkeypatch.setenv(variable, '["RS256", ')
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith(variable) and f"e.g. {variable}=" in message
    assert "\n" not in message


def test_a_flag_is_named_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value from a command-line flag is reported under the flag, not the variable."""
    with pytest.raises(ConfigurationError, match=r"^--port 99999 .*; e\.g\. --port 8000$"):
        load_settings({"port": "--port"}, port=99999)


@pytest.mark.parametrize(
    "url", ["http://mailer:hunter2-pw@mail.example", "smtp://mailer:hunter2-pw@[mail.example"]
)
def test_a_bad_smtp_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """The pipeline's SMTP URL is checked with the other settings, and a message never shows
    the password it holds."""
    monkeypatch.setenv("TIDINGS_SMTP_URL", url)
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    message = str(error.value)
    assert message.startswith("TIDINGS_SMTP_URL") and "e.g. TIDINGS_SMTP_URL=smtp://" in message
    assert "hunter2" not in message


def test_rate_limits_name_the_known_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_RATE_LIMITS", '{"pigeon": "1/hour"}')
    with pytest.raises(ConfigurationError, match=r"^TIDINGS_RATE_LIMITS=.*pigeon.*email"):
        load_settings()
