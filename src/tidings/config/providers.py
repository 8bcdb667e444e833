"""The email and SMS providers' settings (docs/pipeline.md, "Email and SMS providers"): a part
of :class:`~tidings.config.settings.Settings`, kept here so that each module stays small."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderSettings(BaseSettings):
    """``TIDINGS_EMAIL_PROVIDERS``, ``TIDINGS_SMS_PROVIDERS`` and each provider's settings."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="ignore")

    email_providers: str | None = Field(
        None,
        description="Email providers in failover order, comma-separated: smtp, ses, postmark "
        "(default: smtp when TIDINGS_SMTP_URL is set).",
    )
    sms_providers: str | None = Field(
        None,
        description="SMS providers in failover order, comma-separated: http, twilio (default: "
        "http when TIDINGS_SMS_URL is set).",
    )
    ses_region: str | None = Field(None, description="Amazon SES region (default: AWS_REGION).")
    ses_endpoint_url: str | None = Field(None, description="SES API endpoint (default: AWS's).")
    ses_configuration_set: str | None = Field(None, description="SES configuration set to use.")
    ses_sns_topic_arn: str | None = Field(
        None, description="The SNS topic whose SES events /providers/ses/events accepts."
    )
    ses_sns_cert_host: str | None = Field(
        None,
        description="Host (and port) SNS signing certificates may come from (default: "
        "sns.<region>.amazonaws.com).",
    )
    postmark_server_token: str | None = Field(None, description="Postmark server API token.")
    postmark_url: str = Field("https://api.postmarkapp.com", description="The Postmark API.")
    postmark_webhook_user: str | None = Field(None, description="Postmark webhooks' user.")
    postmark_webhook_password: str | None = Field(
        None, description="Postmark webhooks' basic-auth password (set in the webhook's URL)."
    )
    twilio_account_sid: str | None = Field(None, description="Twilio account SID (AC…).")
    twilio_auth_token: str | None = Field(None, description="Twilio auth token.")
    twilio_from: str | None = Field(
        None, description="Twilio sender: a number, or a messaging service SID (MG…)."
    )
    twilio_url: str = Field("https://api.twilio.com", description="The Twilio REST API.")

    # Checked when loaded, so that a mistake is named with its variable before anything
    # starts. Imported late: config is imported first.
    @field_validator("email_providers", "sms_providers")
    @classmethod
    def _providers(cls, value: str | None, info: ValidationInfo) -> str | None:
        from tidings.delivery.channels.providers.base import check_providers

        return check_providers(value, "email" if info.field_name == "email_providers" else "sms")
