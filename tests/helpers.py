"""Small helpers shared by the bus tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker import BusSettings, Mirror, MosquittoBroker, nodes_from


def settings(broker: MosquittoBroker, **overrides: object) -> BusSettings:
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "connect_timeout_s": 5.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    values.update(overrides)
    return BusSettings.model_validate(values)


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
    """Poll ``check`` until true; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def is_online(mirror: Mirror, node_id: str) -> bool:
    """Whether the mirror's ``slm/nodes`` entries say ``node_id`` is online."""
    status = nodes_from(mirror.items()).get(node_id)
    return status is not None and status.online
