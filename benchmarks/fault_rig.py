"""The real system for fault scenarios: Mosquitto, node processes, the gateway, a client.

- :class:`NodeProcess`: ``edgecollab node`` in its own process (simulated Jetson Orin
  Nano engine, labelled simulated), so that it can be SIGKILLed.
- :func:`running_rig`: node processes plus the gateway (its real orchestrator, MQTT
  ingress and CMS directory) in this process.
- :class:`Client`: sends chat queries to the gateway's MQTT ingress and accounts
  for every reply by correlation id: ``answered``, ``failed_clearly`` (an error
  reply, or the broker refused the request at once), ``lost`` (nothing by the
  deadline) and ``duplicated`` (more than one final reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker import (
    CBOR,
    BusClient,
    BusError,
    BusSettings,
    Chat,
    ChatMessage,
    Cms,
    CodecError,
    ErrorReply,
    Inbound,
    MosquittoBroker,
    Result,
    decode,
    encode,
    nodes_from,
    publish_properties,
)
from broker.topics import reply_filter, reply_topic

INGRESS = "computation/query/request"
ROOT = Path(__file__).resolve().parent.parent


def bus_settings(broker: MosquittoBroker, **extra: Any) -> dict[str, Any]:
    return {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "connect_timeout_s": 10.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        **extra,
    }


class NodeProcess:
    """One ``edgecollab node`` process on the simulated engine."""

    def __init__(
        self, broker: MosquittoBroker, node_id: str, capability: str, folder: Path, **engine: Any
    ) -> None:
        self.node_id = node_id
        self.config = folder / f"{node_id}.yaml"
        self.log = folder / f"{node_id}.log"
        config = {
            "node_id": node_id,
            "device": "jetson-orin-nano (simulated)",
            "bus": bus_settings(broker, session_expiry_s=60),
            "engine": {"type": "simulated", "profile": "jetson-orin-nano", **engine},
            "capabilities": [capability],
            "limits": {"max_inflight_tokens": 4096, "max_tokens": 512},
            "load_interval_s": 0.05,
            "metrics_interval_s": 1.0,
        }
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgecollab.cli", "node", "--config", str(self.config)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Counts:
    sent: int = 0
    answered: int = 0
    failed_clearly: int = 0
    lost: int = 0
    duplicated: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    late_s: float = 0.0  # the worst time past a deadline at which an outcome came
    worst_answer_s: float = 0.0
    worst_error_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # one error message per code

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "failed_clearly": self.failed_clearly,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "routes": dict(self.routes),
            "errors": dict(self.errors),
            "worst_past_deadline_s": round(self.late_s, 3),
            "worst_answer_s": round(self.worst_answer_s, 3),
            "worst_error_s": round(self.worst_error_s, 3),
            "error_examples": dict(self.examples),
            **self.extra,
        }


@dataclass
class _Sent:
    deadline: float
    finals: list[Result | ErrorReply] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    at: float = 0.0
    t0: float = field(default_factory=time.monotonic)


class Client:
    """Queries through the gateway's MQTT ingress, each reply accounted for."""

    def __init__(self, bus: BusClient) -> None:
        self.bus = bus
        self.counts = Counts()
        self._sent: dict[bytes, _Sent] = {}
        self._seq = 0

    async def __aenter__(self) -> Client:
        await self.bus.subscribe(reply_filter(self.bus.client_id), self._on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _on_reply(self, msg: Inbound) -> None:
        sent = self._sent.get(msg.correlation or b"")
        if sent is None:
            return
        try:
            reply = decode(msg.payload, msg.content_type)
        except CodecError:
            return
        if isinstance(reply, Result | ErrorReply):
            sent.finals.append(reply)
            if not sent.done.is_set():
                sent.at = time.monotonic()
            sent.done.set()

    async def ask(
        self, text: str, *, max_tokens: int, deadline_s: float
    ) -> Result | ErrorReply | None:
        """Send one query and account for its outcome; return the first final reply."""
        self._seq += 1
        self.counts.sent += 1
        correlation = f"{self._seq}-{os.urandom(4).hex()}".encode()
        sent = _Sent(deadline=time.monotonic() + deadline_s)
        self._sent[correlation] = sent
        chat = Chat(messages=(ChatMessage("user", text),), max_tokens=max_tokens)
        props = publish_properties(
            content_type=CBOR,
            response_topic=reply_topic(self.bus.client_id, "q"),
            correlation=correlation,
            expiry_s=deadline_s,
            user={"tenant": "faults"},
        )
        try:
            # Accepted = acknowledged by the broker; a refusal is immediate and clear.
            await self.bus.publish(
                INGRESS, encode(chat, CBOR), qos=1, properties=props, timeout=2.0
            )
        except BusError as exc:
            self._count_error(f"not accepted: {type(exc).__name__}")
            self.counts.failed_clearly += 1
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sent.done.wait(), deadline_s + 1.0)
        await asyncio.sleep(0.3)  # a second final reply, if any, would come now
        return sent.finals[0] if sent.finals else None

    def _count_error(self, key: str) -> None:
        self.counts.errors[key] = self.counts.errors.get(key, 0) + 1

    def tally(self) -> Counts:
        """Classify every accepted query; call once all ``ask`` calls returned."""
        c = self.counts
        for sent in self._sent.values():
            if not sent.finals:
                continue
            c.late_s = max(c.late_s, sent.at - sent.deadline)
            took = sent.at - sent.t0
            if len(sent.finals) > 1:
                c.duplicated += 1
            first = sent.finals[0]
            if isinstance(first, Result):
                c.answered += 1
                c.worst_answer_s = max(c.worst_answer_s, took)
                route = str((first.meta or {}).get("route", "edge"))
                c.routes[route] = c.routes.get(route, 0) + 1
            else:
                c.failed_clearly += 1
                c.worst_error_s = max(c.worst_error_s, took)
                self._count_error(first.code.value)
                c.examples.setdefault(first.code.value, first.message[:200])
        accepted = c.sent - sum(v for k, v in c.errors.items() if k.startswith("not accepted"))
        c.lost = accepted - sum(1 for s in self._sent.values() if s.finals)
        return c


async def wait_online(mirror: Any, node_ids: list[str], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = nodes_from(mirror.items("slm/nodes"))
        if all(n in status and status[n].online for n in node_ids):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nodes {node_ids} not online within {timeout} s")


@contextlib.asynccontextmanager
async def running_rig(
    broker: MosquittoBroker,
    folder: Path,
    *,
    nodes: int,
    cloud_url: str | None,
    capability: str = "faults",
    edge_timeout_s: float = 10.0,
    engine: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Any, list[NodeProcess], Client]]:
    """Nodes (processes), the gateway (in process) and a client, all on ``broker``."""
    from gateway.config import GatewayConfig  # noqa: PLC0415 - heavy imports, lazily
    from gateway.service import running_gateway  # noqa: PLC0415

    procs = [
        NodeProcess(broker, f"fault-node-{i}", capability, folder, **(engine or {}))
        for i in range(nodes)
    ]
    for proc in procs:
        proc.start()
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "fault-gw",
            "bus": bus_settings(broker, session_expiry_s=60),
            "http_port": 0,
            "capability": capability,
            "ledger_url": f"sqlite:///{folder}/ledger.sqlite3",
            "cache_enabled": False,
            "edge_timeout_s": edge_timeout_s,
            "max_edge_attempts": 3,
            "cloud": {
                "base_url": cloud_url or "http://127.0.0.1:9/v1",
                "model": "cloud",
                "enabled": cloud_url is not None,
                "timeout_s": 20,
                "retries": 0,
            },
        }
    )
    try:
        async with running_gateway(config) as gw:
            await wait_online(gw.mirror, [p.node_id for p in procs])
            client_bus = BusSettings.model_validate(bus_settings(broker, session_expiry_s=60))
            async with BusClient(client_bus, "fault-client") as bus, Client(bus) as client:
                yield gw, procs, client
    finally:
        for proc in procs:
            proc.stop()


async def clear_nodes(broker: MosquittoBroker, procs: list[NodeProcess]) -> None:
    """Clear the retained entries of ``procs`` (so the next scenario starts clean)."""
    async with BusClient(BusSettings.model_validate(bus_settings(broker)), "fault-clean") as bus:
        cms = Cms(bus)
        for proc in procs:
            for entry in ("birth", "state", "load"):
                await cms.delete(f"slm/nodes/{proc.node_id}/{entry}")
