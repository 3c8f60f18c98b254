"""`sohbet_entries{table}`: what the server holds in memory, by table, comes back to its level
before the load once the users have left (the soak's check, in small, on both stores).

Only the tables capped by design (`BOUNDED_TABLES`) may stay up; every other one is compared
with a scrape taken before anyone connected.
"""

from __future__ import annotations

import asyncio

from sohbet.api.metrics import BOUNDED_TABLES, entry_counts

from ..chatkit import chat_server, with_chat
from .test_http_api import BACKEND, api_of
from .test_metrics import Run, Samples, scrape

GRACE_S = 0.3


def entries(samples: Samples) -> dict[str, float]:
    return {dict(labels)["table"]: v for (name, labels), v in samples.items() if name == "sohbet_entries"}


def test_every_table_returns_to_its_level_once_the_users_have_left(run: Run, database_url: str) -> None:
    async def main() -> None:
        chat = with_chat(presence_grace_s=GRACE_S)
        async with chat_server(database_url, chat=chat) as h:
            before = entries(await scrape(h))
            assert set(before) == set(entry_counts(h.server, h.chat))
            assert before["hub_users"] == 0
            alice, bob, carol = await h.connect("alice"), await h.connect("bob"), await h.connect("carol")
            async with api_of(h) as api:  # closed before the end: its kept-alive socket counts
                created = await api.ok(
                    "POST", "/api/conversations", 201, json={"members": ["alice", "bob", "carol"]}, headers=BACKEND
                )
            cid = created["conversation"]["id"]
            for client in (alice, bob, carol):
                await client.expect("conversation:created")
            message = await alice.send(cid, "hello")
            await bob.expect("chat:message")
            await carol.expect("chat:message")
            await bob.send_raw({"type": "chat:typing", "payload": {"conversation_id": cid}})
            await alice.expect("chat:typing")
            await bob.send_raw({"type": "chat:read", "payload": {"conversation_id": cid, "seq": message["seq"]}})
            await alice.expect("chat:read")
            await carol.ok("chat:history", {"conversation_id": cid})
            await carol.ok("presence:query", {"user_ids": ["alice", "bob"]})
            during = entries(await scrape(h))
            assert during["hub_users"] == during["sessions"] == during["websockets"] == 3
            assert during["hub_member_entries"] == 3
            assert during["hub_user_conversation_sets"] == 3
            assert during["hub_typing"] == 1
            assert during["rate_buckets"] >= 1
            assert during["verified_tokens"] == 3
            for client in (alice, bob, carol):
                await client.ws.close()
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                after = entries(await scrape(h))
                grown = {t: (before[t], n) for t, n in after.items() if n > before[t] and t not in BOUNDED_TABLES}
                if not grown or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert not grown, f"tables above their level before the load (before, after): {grown}"
            assert after["hub_grace"] == after["hub_user_conversation_sets"] == after["hub_member_sets"] == 0
            assert after["verified_tokens"] == 3  # capped by design: kept so a reconnect skips its check

    run(main())
