"""Birth and death of agents, with session numbers (the lesson of Sparkplug B).

Each connection of an agent is one session with a number larger than the last.
The will, registered at CONNECT, is ``state=offline`` for that session; after
connecting the agent publishes its birth and ``state=online`` for the same
session. A reader ignores a death whose session is older than the current
birth's: it is the will of a connection that was already replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from broker.client import BusClient, Inbound, Will
from broker.cms import Cms, CmsEntry
from broker.codec import CBOR, decode, encode
from broker.errors import CodecError
from broker.messages import Birth, State
from broker.topics import node_key, validate_id

logger = logging.getLogger(__name__)


class Presence:
    """Publishes an agent's birth and state and arranges its will.

    Create it before the :class:`BusClient` and pass :meth:`will` as the client's
    will factory, then call :meth:`attach` once the CMS client exists.
    """

    def __init__(self, node_id: str, info: Callable[[], dict[str, Any]]) -> None:
        self.node_id = validate_id(node_id, "node id")
        self._info = info
        self.session = 0
        self._cms: Cms | None = None

    def will(self) -> Will:
        """A new session for the coming connection; its will says offline."""
        self.session = max(self.session + 1, time.time_ns() // 1_000_000)
        payload = encode(State(online=False, session=self.session, ts=time.time()))
        return Will(node_key(self.node_id, "state"), payload, qos=1, retain=True, content_type=CBOR)

    async def attach(self, bus: BusClient, cms: Cms) -> None:
        """Publish birth and online now and after every reconnect; offline on close."""
        self._cms = cms
        bus.on_connect(self.publish_birth)
        bus.on_close(self._publish_offline)
        await bus.subscribe(node_key(self.node_id, "state"), self._on_own_state)
        if bus.is_connected:
            await self.publish_birth()

    async def publish_birth(self) -> None:
        """(Re)publish the birth, for example after the agent's capabilities changed."""
        assert self._cms is not None
        now = time.time()
        await self._cms.put_message(
            node_key(self.node_id, "birth"), Birth(self.session, self._info(), now)
        )
        await self._cms.put_message(node_key(self.node_id, "state"), State(True, self.session, now))

    async def _publish_offline(self) -> None:
        assert self._cms is not None
        await self._cms.put_message(
            node_key(self.node_id, "state"), State(False, self.session, time.time())
        )

    async def _on_own_state(self, msg: Inbound) -> None:
        """A stale will of ours overwrote our state: say online again."""
        if not msg.payload or self._cms is None:
            return
        try:
            state = decode(msg.payload, msg.content_type)
        except CodecError:
            return
        if isinstance(state, State) and not state.online and state.session < self.session:
            logger.info("%s: stale will of session %s replaced", self.node_id, state.session)
            await self._cms.put_message(
                node_key(self.node_id, "state"), State(True, self.session, time.time())
            )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What readers conclude about one node from its birth and state entries."""

    node_id: str
    online: bool
    session: int
    info: dict[str, Any]
    reason: str


def node_status(node_id: str, birth: CmsEntry | None, state: CmsEntry | None) -> NodeStatus:
    """Combine birth and state, ignoring a death from an older session."""
    b = birth.message if birth is not None else None
    s = state.message if state is not None else None
    if not isinstance(b, Birth):
        session = s.session if isinstance(s, State) else 0
        return NodeStatus(node_id, False, session, {}, "no birth")
    if not isinstance(s, State):
        return NodeStatus(node_id, True, b.session, b.info, "born, no state yet")
    if s.online:
        return NodeStatus(node_id, True, b.session, b.info, "online")
    if s.session < b.session:
        return NodeStatus(node_id, True, b.session, b.info, "stale death ignored")
    return NodeStatus(node_id, False, b.session, b.info, "offline")


def nodes_from(entries: Iterable[tuple[str, CmsEntry]]) -> dict[str, NodeStatus]:
    """All nodes found in mirror entries under ``slm/nodes``."""
    births: dict[str, CmsEntry] = {}
    states: dict[str, CmsEntry] = {}
    for key, found in entries:
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "nodes":
            if parts[3] == "birth":
                births[parts[2]] = found
            elif parts[3] == "state":
                states[parts[2]] = found
    return {
        node: node_status(node, births.get(node), states.get(node))
        for node in sorted(set(births) | set(states))
    }
