"""Service tokens: a verified token is remembered until its expiry, and not a moment longer."""

from __future__ import annotations

from pathlib import Path

import pytest

import tidings.auth.oauth as oauth
from tidings.auth.oauth import ServiceAuth, create_client
from tidings.errors import InsufficientScope, InvalidToken
from tidings.storage import create_store


async def test_cached_token_still_expires_and_keeps_its_scopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second use of a token skips the signature check but not the expiry or the scope;
    a forged token that differs in one character is verified afresh and refused."""
    async with create_store(f"sqlite:///{tmp_path}/s.db") as store:
        auth = ServiceAuth(store, "s" * 40, ttl=60)
        client, secret = await create_client(store, "svc", {"notify"})
        issued = await auth.issue(client.client_id, secret, "notify")
        token = issued.access_token
        assert (await auth.require(token, "notify")).client_id == client.client_id
        assert (await auth.require(token, "notify")).client_id == client.client_id
        with pytest.raises(InsufficientScope):
            await auth.require(token, "publish")
        middle = token[-10]
        forged = token[:-10] + ("A" if middle != "A" else "B") + token[-9:]
        with pytest.raises(InvalidToken):
            await auth.verify(forged)
        real_time = oauth.time.time
        monkeypatch.setattr(oauth.time, "time", lambda: real_time() + 120)
        with pytest.raises(InvalidToken):
            await auth.verify(token)


async def test_a_deleted_clients_tokens_stop_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a client revokes its tokens within CLIENT_RECHECK seconds (here at once),
    cached or not; another client's token keeps working."""
    monkeypatch.setattr(oauth, "CLIENT_RECHECK", 0.0)
    async with create_store(f"sqlite:///{tmp_path}/s.db") as store:
        auth = ServiceAuth(store, "s" * 40, ttl=600)
        gone, gone_secret = await create_client(store, "gone", {"notify"})
        kept, kept_secret = await create_client(store, "kept", {"notify"})
        token = (await auth.issue(gone.client_id, gone_secret)).access_token
        other = (await auth.issue(kept.client_id, kept_secret)).access_token
        await auth.verify(token)  # verified and cached
        assert await store.delete_client(gone.client_id)
        with pytest.raises(InvalidToken, match="deleted"):
            await auth.verify(token)
        assert (await auth.verify(other)).client_id == kept.client_id
