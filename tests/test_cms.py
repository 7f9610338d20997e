"""The CMS through a real Mosquitto: retained replay, expiry, clearing, presence."""

from __future__ import annotations

import asyncio

from broker import BusClient, Cms, CmsEvent, Presence, State, node_status, nodes_from
from broker.topics import cms_key, node_key
from tests.helpers import eventually, is_online, settings


async def test_put_get_delete(mosquitto, prefix):
    key = cms_key("configs", prefix, "max_tokens")
    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        cms = Cms(bus)
        assert await cms.get(key) is None
        await cms.put(key, {"limit": 256, "unit": "tokens"})
        found = await cms.get(key)
        assert found is not None
        assert found.value == {"limit": 256, "unit": "tokens"}
        await cms.delete(key)
        assert await cms.get(key) is None


async def test_late_joiner_mirrors_every_retained_entry(mosquitto, prefix):
    async with BusClient(settings(mosquitto), f"{prefix}-w") as bus:
        cms = Cms(bus)
        await asyncio.gather(*(cms.put(cms_key("metrics", prefix, f"n{i}"), i) for i in range(200)))
    async with (
        BusClient(settings(mosquitto), f"{prefix}-r") as bus,
        Cms(bus).mirror(f"slm/metrics/{prefix}") as mirror,
    ):
        assert len(mirror) == 200
        assert mirror.get(cms_key("metrics", prefix, "n7")) == 7
        assert [k for k, _ in mirror.items()][:2] == [
            cms_key("metrics", prefix, "n0"),
            cms_key("metrics", prefix, "n1"),
        ]


async def test_mirror_follows_changes_and_clears(mosquitto, prefix):
    key = cms_key("parameters", prefix, "temperature")
    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        cms = Cms(bus)
        async with cms.mirror(f"slm/parameters/{prefix}") as mirror:
            events: list[CmsEvent] = []

            async def collect() -> None:
                async for event in mirror.changes():
                    events.append(event)

            task = asyncio.create_task(collect())
            await asyncio.sleep(0)
            await cms.put(key, 0.7)
            await eventually(lambda: mirror.get(key) == 0.7, what="set seen")
            await cms.put(key, 0.2)
            await eventually(lambda: mirror.get(key) == 0.2, what="update seen")
            await cms.delete(key)
            await eventually(lambda: mirror.entry(key) is None, what="clear seen")
            await eventually(lambda: len(events) == 3, what="three events")
            task.cancel()
    assert [e.reason for e in events] == ["set", "set", "cleared"]
    assert events[2].entry is None


async def test_volatile_entries_expire_in_the_mirror_and_at_the_broker(mosquitto, prefix):
    key = node_key(prefix, "load")
    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        cms = Cms(bus)
        async with cms.mirror(key) as mirror:
            await cms.put(key, {"free_slots": 3}, expiry_s=1)
            await eventually(lambda: mirror.get(key) == {"free_slots": 3}, what="load seen")
            took = await eventually(
                lambda: mirror.entry(key) is None, timeout=3, what="load expired"
            )
            assert took < 2.0
        await asyncio.sleep(0.3)
        assert await cms.get(key) is None  # a fresh reader: the broker forgot it too


async def test_malformed_retained_entry_is_ignored_and_counted(mosquitto, prefix):
    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        await bus.publish(cms_key("configs", prefix, "bad"), b"\xff\x00garbage", retain=True)
        cms = Cms(bus)
        await cms.put(cms_key("configs", prefix, "good"), "yes")
        async with cms.mirror(f"slm/configs/{prefix}") as mirror:
            assert mirror.get(cms_key("configs", prefix, "good")) == "yes"
            assert mirror.entry(cms_key("configs", prefix, "bad")) is None
            assert mirror.stats["malformed"] == 1
        await cms.delete(cms_key("configs", prefix, "bad"))


def _presence(prefix: str) -> Presence:
    return Presence(prefix, lambda: {"capabilities": ["chat"], "expertise": ["health"]})


async def test_birth_online_then_offline_on_clean_exit(mosquitto, prefix):
    async with (
        BusClient(settings(mosquitto), f"{prefix}-watch") as watch,
        Cms(watch).mirror(f"slm/nodes/{prefix}") as mirror,
    ):
        presence = _presence(prefix)
        async with BusClient(settings(mosquitto), prefix, will=presence.will) as node:
            await presence.attach(node, Cms(node))
            await eventually(
                lambda: is_online(mirror, prefix),
                what="online",
            )
            status = nodes_from(mirror.items())[prefix]
            assert status.info["expertise"] == ["health"]
            assert status.session == presence.session
        await eventually(
            lambda: not nodes_from(mirror.items())[prefix].online, what="offline after clean exit"
        )


async def test_killed_node_is_marked_offline_by_its_will(mosquitto, prefix):
    async with (
        BusClient(settings(mosquitto), f"{prefix}-watch") as watch,
        Cms(watch).mirror(f"slm/nodes/{prefix}") as mirror,
    ):
        presence = _presence(prefix)
        node = BusClient(settings(mosquitto), prefix, will=presence.will)
        async with node:
            await presence.attach(node, Cms(node))
            await eventually(
                lambda: is_online(mirror, prefix),
                what="online",
            )
            assert node._link is not None
            node._link.abort()  # the process dies: no DISCONNECT, the broker sends the will
            await eventually(
                lambda: not nodes_from(mirror.items())[prefix].online,
                timeout=3,
                what="offline via will",
            )
            assert nodes_from(mirror.items())[prefix].reason == "offline"
            # ...and the reconnecting client is a new session that is online again.
            await eventually(
                lambda: nodes_from(mirror.items())[prefix].online,
                timeout=5,
                what="online after reconnect",
            )
            assert nodes_from(mirror.items())[prefix].session == presence.session


async def test_stale_will_is_ignored_by_readers_and_repaired_by_the_node(mosquitto, prefix):
    async with (
        BusClient(settings(mosquitto), f"{prefix}-watch") as watch,
        Cms(watch).mirror(f"slm/nodes/{prefix}") as mirror,
    ):
        presence = _presence(prefix)
        async with BusClient(settings(mosquitto), prefix, will=presence.will) as node:
            await presence.attach(node, Cms(node))
            await eventually(lambda: prefix in nodes_from(mirror.items()), what="born")
            current = presence.session
            # The will of an earlier connection, delivered late, overwrites the state.
            await Cms(watch).put_message(node_key(prefix, "state"), State(False, current - 5))
            birth = mirror.entry(node_key(prefix, "birth"))
            await eventually(
                lambda: (
                    (s := mirror.entry(node_key(prefix, "state"))) is not None
                    and isinstance(s.message, State)
                    and s.message.session == current - 5
                ),
                what="stale death seen",
            )
            # Readers ignore it...
            status = node_status(prefix, birth, mirror.entry(node_key(prefix, "state")))
            assert status.online
            assert status.reason == "stale death ignored"
            # ...and the node puts its own state right.
            await eventually(
                lambda: (
                    (s := mirror.entry(node_key(prefix, "state"))) is not None
                    and isinstance(s.message, State)
                    and s.message.online
                    and s.message.session == current
                ),
                what="node republished online",
            )


async def test_mirror_survives_a_broker_restart(fresh_broker, prefix):
    key = cms_key("configs", prefix, "version")
    async with BusClient(settings(fresh_broker), f"{prefix}-a") as bus:
        cms = Cms(bus)
        await cms.put(key, "1.0")
        async with cms.mirror("slm/configs") as mirror:
            assert mirror.get(key) == "1.0"
            await asyncio.to_thread(fresh_broker.restart)
            await eventually(lambda: mirror.stats["resyncs"] == 1, timeout=10, what="resync")
            assert mirror.get(key) == "1.0"  # persisted by the broker, replayed on resync
            await cms.put(key, "1.1")
            await eventually(lambda: mirror.get(key) == "1.1", what="change after restart")
