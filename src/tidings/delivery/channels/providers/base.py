"""A channel's providers in failover order.

The ``email`` channel sends through ``smtp``, ``ses`` or ``postmark``, the ``sms`` channel
through ``http`` (the generic gateway) or ``twilio``, in the order of
``TIDINGS_EMAIL_PROVIDERS`` / ``TIDINGS_SMS_PROVIDERS``. :func:`send_in_order` tries them within
one attempt of the delivery:

- a provider that takes the message ends the attempt: its message id is the delivery's
  ``provider_id``;
- a :class:`TransientFailure` (5xx, 429, timeout, unreachable, the operator's credentials)
  hands the message to the next provider;
- a :class:`PermanentFailure` (the provider refused this message or address) ends the attempt
  at once: another provider would only be refused too, or deliver what must not be.

With more than one provider, each provider's try is a note of the delivery's history
(``provider_retry``, ``provider_sent``, ``provider_failed``, the detail starting with the
provider's name). When every provider failed for a transient reason the delivery is retried
with backoff, as any transient failure.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

from tidings.delivery.channels.base import Sent
from tidings.errors import ConfigurationError, PermanentFailure, TransientFailure

#: the providers each channel knows, in their documented order
KNOWN = {"email": ("smtp", "ses", "postmark"), "sms": ("http", "twilio")}
#: the setting that orders each channel's providers
SETTING = {"email": "TIDINGS_EMAIL_PROVIDERS", "sms": "TIDINGS_SMS_PROVIDERS"}
#: the history's reasons for a provider's try
SENT, RETRY, FAILED = "provider_sent", "provider_retry", "provider_failed"

M = TypeVar("M")


class Provider(ABC, Generic[M]):
    """One provider of a channel. ``M`` is what the channel hands it: the email channel a
    :class:`~tidings.delivery.channels.email.Mail`, the SMS channel the
    :class:`~tidings.delivery.channels.base.Outgoing` itself."""

    #: its name in ``TIDINGS_EMAIL_PROVIDERS`` / ``TIDINGS_SMS_PROVIDERS`` and the history
    name: ClassVar[str]

    async def start(self) -> None:
        """Open what the provider keeps open. Default: nothing."""

    async def close(self) -> None:
        """Release it. Idempotent. Default: nothing."""

    @abstractmethod
    async def send(self, message: M) -> str | None:
        """Send; the provider's message id.

        Raises:
            TransientFailure: this provider cannot take it now (the next one may).
            PermanentFailure: the message or its address is refused for good.
        """


def check_providers(value: str | None, channel: str) -> str | None:
    """``TIDINGS_EMAIL_PROVIDERS`` or ``TIDINGS_SMS_PROVIDERS`` (comma-separated) in normal
    form: known names, each once, lower-cased; unset or empty is ``None`` (the default).

    Raises:
        ValueError: an unknown or repeated name (the config layer names the setting).
    """
    names = split(value)
    if not names:
        return None
    known = KNOWN[channel]
    for name in names:
        if name not in known:
            raise ValueError(f"{name!r} is not one of the {channel} providers ({', '.join(known)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"names {repeated[0]!r} twice")
    return ",".join(names)


def split(value: str | None) -> list[str]:
    """The names of a comma-separated list, lower-cased."""
    return [name.strip().lower() for name in (value or "").split(",") if name.strip()]


def configured(value: str | None, channel: str, default: str | None) -> list[str]:
    """The providers to build: the setting's, or ``[default]`` when it is unset (the channel's
    historic single provider, when its URL is set)."""
    checked = check_providers(value, channel)
    if checked is not None:
        return split(checked)
    return [default] if default else []


def require(value: str | None, setting: str, channel: str, provider: str) -> str:
    """``value``, or a one-line :class:`ConfigurationError` naming ``setting``."""
    if not value:
        raise ConfigurationError(f"{SETTING[channel]} names {provider}, but {setting} is not set")
    return value


async def send_in_order(
    providers: Sequence[Provider[M]], message: M, budget: float
) -> str | Sent | None:
    """Send ``message`` through the first provider that takes it, within ``budget`` seconds
    in all (each provider is given an even share of what is left, so a provider that hangs
    leaves time to the next).

    One provider: its own answer, unchanged (no notes). Several: a :class:`Sent` with a note
    per try, or the failure with them.

    Raises:
        TransientFailure: every provider failed, at least the last for a transient reason.
        PermanentFailure: a provider refused the message for good (the next ones untried).
    """
    if len(providers) == 1:
        return await providers[0].send(message)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    notes: list[tuple[str, str]] = []
    failures: list[tuple[str, TransientFailure]] = []
    for index, provider in enumerate(providers):
        share = max(deadline - loop.time(), 0.0) / (len(providers) - index)
        try:
            async with asyncio.timeout(share):
                provider_id = await provider.send(message)
        except PermanentFailure as exc:
            notes.append((FAILED, f"{provider.name}: {exc.reason}: {exc.message}"))
            raise PermanentFailure(
                exc.reason, f"{provider.name}: {exc.message}", (*exc.notes, *notes)
            ) from exc
        except TransientFailure as exc:
            failure = exc
        except TimeoutError:
            failure = TransientFailure("timeout", f"no answer within {share:.3g} s")
        else:
            notes.append((SENT, f"{provider.name}: {provider_id}"))
            return Sent(provider_id, tuple(notes))
        notes.append((RETRY, f"{provider.name}: {failure.reason}: {failure.message}"))
        failures.append((provider.name, failure))
    reasons = {failure.reason for _, failure in failures}
    hints = [failure.retry_after for _, failure in failures]
    raise TransientFailure(
        reasons.pop() if len(reasons) == 1 else "provider_error",
        "; ".join(f"{name}: {failure.message}" for name, failure in failures),
        # any provider may take it again first: the earliest hint, if each gave one
        None if any(hint is None for hint in hints) else min(h for h in hints if h is not None),
        tuple(notes),
    )


async def start_all(providers: Sequence[Provider[M]]) -> None:
    for provider in providers:
        await provider.start()


async def close_all(providers: Sequence[Provider[M]]) -> None:
    for provider in providers:
        await provider.close()
