"""The live dashboard: stream and traffic bookkeeping, the JSON/SSE endpoints, and the page
in a real headless Chromium over a real testbed (Mosquitto, node processes, SmolLM2, the
cloud stand-in, a device publishing embeddings)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from broker import (
    JSON,
    Birth,
    BusClient,
    Cms,
    Embedding,
    Event,
    MosquittoBroker,
    State,
    encode,
)
from broker.topics import cms_key, data_topic, node_key
from gateway.data_streams import StreamTable
from gateway.ledger import Ledger, LedgerEntry
from gateway.service import running_gateway
from gateway.traffic import Traffic
from tests.helpers import eventually, gateway_config, running_node, settings
from wearables import SensorAgent, SensorConfig

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_ENV = "EDGECOLLAB_DASHBOARD_SCREENSHOT"  # also save the final screenshot here


# --- bookkeeping (no I/O) ------------------------------------------------------------


def _embedding(**meta: Any) -> Embedding:
    return Embedding(np.ones(16, dtype=np.float32), model="imu-encoder-v1", meta=meta)


def test_stream_table_keeps_metadata_rate_and_counts_bad_messages():
    now = [1000.0]
    table = StreamTable(max_streams=2, clock=lambda: now[0])
    topic = data_topic("health", "imu", "watch-1")
    for _ in range(11):
        sample = _embedding(
            type="accelerometer", rate_hz=10, source="synthetic", location={"placement": "wrist"}
        )
        assert table.observe(topic, encode(sample), None)
        now[0] += 0.1
    assert not table.observe(topic, b"\xff not cbor", None)
    assert not table.observe("computation/x/request", encode(_embedding()), None)
    assert not table.observe("data/health/imu", encode(_embedding()), None)  # 3 levels
    [row] = table.rows()
    assert (row["agent_id"], row["domain"], row["stream"]) == ("watch-1", "health", "imu")
    assert row["type"] == "accelerometer"
    assert row["model"] == "imu-encoder-v1"
    assert row["shape"] == [16]
    assert row["declared_rate_hz"] == 10
    assert row["rate_hz"] == pytest.approx(10, rel=0.01)
    assert row["messages"] == 11
    assert row["source"] == "synthetic"
    assert row["place"] == "wrist"
    assert row["simulated"] is True
    assert table.stats["malformed"] == 3
    event = Event(
        "congestion",
        "traffic",
        "onset",
        start=999.0,
        score=12.0,
        threshold=25.0,
        sequence=0,
        message="congestion onset on traffic",
    )
    assert table.observe(data_topic("urban", "events", "rsu-1"), encode(event), None)
    [seen] = table.events()
    assert (seen["agent_id"], seen["type"], seen["phase"]) == ("rsu-1", "congestion", "onset")
    assert len(table.rows()) == 1  # an event is not a stream
    # bounded: the stream seen least recently goes first
    table.observe(data_topic("env", "air", "rsu-1"), encode(_embedding(), JSON), JSON)
    table.observe(data_topic("env", "noise", "rsu-1"), encode(_embedding()), None)
    assert {r["stream"] for r in table.rows()} == {"air", "noise"}
    assert table.stats["evicted"] == 1


def _entry(route: str, ts: datetime, **extra: Any) -> LedgerEntry:
    values: dict[str, Any] = {
        "tenant": "t",
        "route": route,
        "policy": "fit_first",
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 10,
        "ts": ts,
    }
    if route == "cloud":
        values.update(cost_usd=0.01, cloud_equivalent_usd=0.01, escalation_reason="low confidence")
    elif route in ("edge", "cache"):
        values.update(cloud_equivalent_usd=0.002)
    else:
        values.update(status="unavailable", prompt_tokens=0, completion_tokens=0)
    values.update(extra)
    return LedgerEntry(**values)


async def test_traffic_totals_advance_their_watermark_without_losing_rows(tmp_path):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = [start]
    async with Ledger(f"sqlite:///{tmp_path}/l.sqlite3") as ledger:
        await ledger.record(_entry("edge", start - timedelta(days=3)))
        traffic = Traffic(ledger, margin_s=60, recent=3, clock=lambda: now[0])
        first = await traffic.refresh()
        for minute in range(1, 8):  # rows on both sides of several watermark steps
            now[0] = start + timedelta(minutes=minute)
            await ledger.record(_entry("edge", now[0] - timedelta(seconds=5)))
            await ledger.record(_entry("cloud", now[0] - timedelta(seconds=30), policy="random"))
            await ledger.record(_entry("cache", now[0] - timedelta(seconds=50)))
            state = await traffic.refresh()
        await ledger.record(_entry("error", now[0]))
        state = await traffic.refresh()
    assert first["totals"]["requests"] == 1
    totals = state["totals"]
    assert (totals["edge"], totals["cloud"], totals["cache"], totals["errors"]) == (8, 7, 7, 1)
    assert totals["requests"] == 23
    assert totals["cost_usd"] == pytest.approx(0.07)
    assert totals["all_cloud_usd"] == pytest.approx(0.07 + 15 * 0.002)
    assert totals["saved_usd"] == pytest.approx(15 * 0.002)
    assert totals["edge_share"] == pytest.approx(15 / 22)
    assert totals["last_minute"] == 4  # the newest three rows plus the error
    assert {p["policy"]: p["cloud"] for p in state["by_policy"]} == {"random": 7, "fit_first": 0}
    assert state["escalations"] == [{"reason": "low confidence", "route": "cloud", "count": 7}]
    assert state["errors"] == [{"reason": "unavailable", "route": "error", "count": 1}]
    assert [r["route"] for r in state["recent"]] == ["error", "edge", "cloud"]


async def test_a_ledger_made_before_the_dashboard_gets_its_time_index(tmp_path):
    import sqlalchemy as sa  # noqa: PLC0415

    url = f"sqlite:///{tmp_path}/old.sqlite3"
    async with Ledger(url) as ledger:
        await ledger.record(_entry("edge", datetime.now(UTC)))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_requests_ts"))  # as an older gateway made it
    async with Ledger(url) as ledger:
        recent = await ledger.recent(5)
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("requests")}
    engine.dispose()
    assert "ix_requests_ts" in indexes
    assert [r.route for r in recent] == ["edge"]


# --- a real gateway ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway(
    broker: MosquittoBroker, tmp_path: Path, prefix: str, cloud_url: str | None, **extra: Any
) -> AsyncIterator[tuple[str, Any]]:
    config = gateway_config(broker, tmp_path, prefix, cloud_url, cache_enabled=False, **extra)
    async with running_gateway(config) as gw:
        yield f"http://127.0.0.1:{gw.port}", gw


async def _sse_states(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "state":
            yield json.loads(line.removeprefix("data: "))


async def test_state_and_events_follow_data_streams_and_the_ledger(mosquitto, tmp_path, prefix):
    async with (
        gateway(mosquitto, tmp_path, prefix, None) as (url, gw),
        BusClient(settings(mosquitto), f"{prefix}-dev") as device,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        page = await http.get("/dashboard")
        script = await http.get("/dashboard/static/dashboard.js")
        missing = await http.get("/dashboard/static/secrets.txt")
        state = (await http.get("/dashboard/state")).json()
        async with http.stream("GET", "/dashboard/events") as events:
            states = _sse_states(events)
            first = await anext(states)
            topic = data_topic("health", "imu", f"{prefix}-watch")
            await device.publish(topic, b"garbage", qos=0)
            await device.publish(topic, encode(_embedding(type="accelerometer")), qos=0)
            # no node serves the pool and no cloud is configured: a 503, recorded
            failed = await http.post(
                "/v1/chat/completions",
                json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
            )
            seen: dict[str, Any] = first
            async with asyncio.timeout(10):
                while not (seen["streams"] and seen["traffic"]["totals"]["errors"]):
                    seen = await anext(states)
            watching = gw.dashboard._watchers
        # a closed page stops costing anything: nobody watches, nothing is rebuilt
        await eventually(lambda: gw.dashboard._watchers == 0, what="watcher gone")
    assert watching == 1
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "/dashboard/static/dashboard.js" in page.text
    assert "EventSource" in script.text
    assert missing.status_code == 404
    assert state["gateway"]["id"] == f"{prefix}-gw"
    assert state["gateway"]["broker_connected"] is True
    assert first["traffic"]["totals"]["requests"] == 0
    assert failed.status_code == 503
    [stream] = [s for s in seen["streams"] if s["agent_id"] == f"{prefix}-watch"]
    assert stream["type"] == "accelerometer"
    assert seen["data_stats"]["malformed"] >= 1
    assert seen["traffic"]["errors"][0]["reason"] == "unavailable"


async def test_a_hand_written_odd_birth_is_shown_not_fatal(mosquitto, tmp_path, prefix):
    node = f"{prefix}-odd"
    info = {"capabilities": "chat", "models": {"id": "x"}, "device": ["not", "text"]}
    async with (
        gateway(mosquitto, tmp_path, prefix, None) as (url, gw),
        BusClient(settings(mosquitto), f"{prefix}-op") as op,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        cms = Cms(op)
        await cms.put_message(node_key(node, "birth"), Birth(1, info, time.time()))
        await cms.put_message(node_key(node, "state"), State(True, 1, time.time()))
        try:
            await eventually(lambda: gw.mirror.entry(node_key(node, "state")) is not None)
            got = await http.get("/dashboard/state")
        finally:
            await cms.delete(node_key(node, "birth"))
            await cms.delete(node_key(node, "state"))
    assert got.status_code == 200
    [row] = [n for n in got.json()["nodes"] if n["id"] == node]
    assert row["online"] is True
    assert row["capabilities"] == []
    assert row["models"] == []
    assert row["capacity_tps"] is None  # the scheduler ignores it (no limits): shown anyway


async def test_an_open_event_stream_does_not_hold_the_gateway_at_shutdown(
    mosquitto, tmp_path, prefix
):
    # a regression would hang the gateway's exit: fail after 30 s instead
    async with asyncio.timeout(30), gateway(mosquitto, tmp_path, prefix, None) as (_url, gw):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            while b"event: state" not in await reader.readline():
                pass
        stopping = time.monotonic()
    stopped = time.monotonic() - stopping
    async with asyncio.timeout(5):
        rest = await reader.read()  # the server ended the stream
    writer.close()
    assert stopped < 5
    assert rest.endswith(b"0\r\n\r\n")  # the chunked stream was ended cleanly


# --- the page in a real browser over a real testbed ----------------------------------


def chromium() -> str:
    """Debian's chromium; skip only when it is missing and we cannot install it (not root)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.geteuid() == 0:
        pytest.fail(
            "chromium is missing; 'bash scripts/test.sh' installs it (apt-get install chromium)"
        )
    pytest.skip("chromium is not installed and we are not root: sudo apt-get install -y chromium")


@contextlib.contextmanager
def node_process(
    broker: MosquittoBroker, tmp_path: Path, node_id: str, **config: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """``edgecollab node`` in a process of its own (so that it can be killed)."""
    path = tmp_path / f"{node_id}.json"  # JSON is YAML
    path.write_text(
        json.dumps(
            {
                "node_id": node_id,
                "bus": {"host": broker.host, "port": broker.port},
                "load_interval_s": 0.05,
                "metrics_interval_s": 0.5,
                **config,
            }
        )
    )
    log = (tmp_path / f"{node_id}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecollab.cli", "node", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


async def run_devices(broker: MosquittoBroker, stop: asyncio.Event) -> None:
    """The project's device agents (simulated: synthetic data, real encoders and
    detectors): a roadside unit (traffic, with congestion events, and air quality) and a
    wearable's vitals on LiteRT, sped up so that the page sees events in seconds."""
    bus = settings(broker).model_dump()
    features = {"type": "features", "steps": 30}
    rsu = SensorConfig.model_validate(
        {
            "agent_id": "rsu-main-st",
            "device": "roadside_unit",
            "domain": "urban",
            "bus": bus,
            "location": {"site": "main-st", "lat": 45.07, "lon": 7.64},
            "streams": [
                {
                    "name": "traffic",
                    "source": {
                        "kind": "synthetic",
                        "preset": "traffic",
                        "episodes_per_hour": 60,
                        "episode_s": [20, 40],
                        "seed": 4,
                    },
                    "encoder": {**features, "offset": [30, 45, 15], "scale": [10, 15, 20]},
                    "detector": {
                        "type": "threshold",
                        "event": "congestion",
                        "rules": {"speed": {"below": 25}},
                    },
                    "speed": 20,
                },
                {
                    "name": "air_quality",
                    "source": {"kind": "synthetic", "preset": "air_quality", "seed": 5},
                    "encoder": {
                        **features,
                        "offset": [12, 25, 60, 24, 55],
                        "scale": [20, 20, 30, 5, 10],
                    },
                    "speed": 5,
                },
            ],
        }
    )
    wearable = SensorConfig.model_validate(
        {
            "agent_id": "wrist-07",
            "device": "wearable",
            "domain": "health",
            "bus": bus,
            "location": {"placement": "wrist", "site": "ward-3"},
            "streams": [
                {
                    "name": "vitals",
                    "source": {"kind": "synthetic", "preset": "vitals", "seed": 2},
                    "encoder": {"type": "litert", "model": "vitals-v1"},
                    "speed": 10,
                }
            ],
        }
    )
    async with SensorAgent(rsu) as roadside, SensorAgent(wearable) as wrist:
        await asyncio.gather(roadside.run(stop), wrist.run(stop))


async def test_dashboard_in_a_real_browser_shows_nodes_and_a_node_dying(
    fresh_broker, engine, cloud_url, tmp_path
):
    from playwright.async_api import async_playwright  # noqa: PLC0415 - only this test

    browser_path = chromium()
    # A broker of its own: the dashboard shows every node and device the CMS knows.
    broker, pool = fresh_broker, "chat"
    orin, pi, llm = "orin-nano-1", "rpi5-1", "smollm2-cpu"
    simulated = {"capabilities": [pool], "limits": {"max_tokens": 256}}
    strict = cms_key("tenants", "strict", "confidence_threshold")
    stop = asyncio.Event()
    with (
        node_process(
            broker,
            tmp_path,
            orin,
            device="jetson-orin-nano (simulated)",
            engine={"type": "simulated", "profile": "jetson-orin-nano"},
            expertise=["health"],
            **simulated,
        ) as orin_proc,
        node_process(
            broker,
            tmp_path,
            pi,
            device="raspberry-pi-5 (simulated)",
            engine={"type": "simulated", "profile": "raspberry-pi-5"},
            expertise=["environment"],
            **simulated,
        ),
    ):
        async with (
            running_node(broker, engine, llm, capabilities=[pool], device="this machine (CPU)"),
            gateway(broker, tmp_path, "site-a", cloud_url, capability=pool) as (url, gw),
            BusClient(settings(broker), "operator") as op,
            httpx.AsyncClient(base_url=url, timeout=120) as http,
            asyncio.TaskGroup() as tasks,
        ):
            tasks.create_task(run_devices(broker, stop), name="devices")
            await eventually(
                lambda: (
                    {n.node_id for n in gw.orchestrator.router.order(10, 10, "general")}
                    >= {orin, pi, llm}
                ),
                timeout=60,
                what="the gateway sees the three nodes",
            )
            await Cms(op).put(strict, 0.999)  # every edge answer is below it: the cloud
            await eventually(lambda: gw.mirror.get(strict) == 0.999, what="policy seen")

            async def ask(tenant: str, question: str) -> str:
                reply = await http.post(
                    "/v1/chat/completions",
                    headers={"X-Tenant": tenant},
                    json={
                        "model": "edgecollab",
                        "messages": [{"role": "user", "content": question}],
                        "max_tokens": 16,
                    },
                )
                assert reply.status_code == 200, reply.text
                return str(reply.json()["edgecollab"]["route"])

            edge = await asyncio.gather(
                ask("clinic-a", "What is the capital of France?"),
                ask("city-ops", "Is the air quality on Main Street good today?"),
                ask("clinic-a", "Give one tip for sleeping well."),
            )
            assert edge == ["edge"] * 3
            assert await ask("strict", "What is 12 times 12?") == "cloud"

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=browser_path, args=BROWSER_ARGS, headless=True
                )
                try:
                    page = await browser.new_page(viewport={"width": 1360, "height": 900})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(f"{url}/dashboard")
                    for node_id in (orin, pi, llm):
                        await page.wait_for_selector(
                            f'[data-node="{node_id}"][data-status="online"]', timeout=15_000
                        )
                    await page.wait_for_selector('tr[data-agent="rsu-main-st"]', timeout=15_000)
                    await page.wait_for_selector('tr[data-agent="wrist-07"]', timeout=15_000)
                    await page.wait_for_selector('[data-event="congestion"]', timeout=20_000)
                    await page.wait_for_function(
                        "document.querySelectorAll('#recent tbody tr[data-route]').length >= 4",
                        timeout=15_000,
                    )
                    await page.wait_for_timeout(1500)  # let the rates settle for the picture
                    await page.screenshot(
                        path=str(tmp_path / "dashboard-before.png"), full_page=True
                    )
                    cost = await page.inner_text("#kpi-cost")
                    reasons = await page.inner_text("#reasons")
                    live = await page.get_attribute("#live", "data-state")
                    renders = await page.evaluate("window.__dashboard.renders")
                    await page.evaluate("window.__notReloaded = true")

                    orin_proc.send_signal(signal.SIGKILL)  # no drain, no goodbye: its will
                    orin_proc.wait(10)
                    killed = time.monotonic()
                    await page.wait_for_selector(
                        f'[data-node="{orin}"][data-status="offline"]', timeout=15_000
                    )
                    seen_after = time.monotonic() - killed
                    print(f"page showed the killed node offline after {seen_after:.2f} s")
                    still = await page.evaluate("window.__notReloaded === true")
                    nodes_kpi = await page.inner_text("#kpi-nodes")
                    pill = await page.inner_text(f'[data-node="{orin}"] [data-role="status"]')
                    others = [
                        await page.get_attribute(f'[data-node="{n}"]', "data-status")
                        for n in (pi, llm)
                    ]
                    after = await page.evaluate("window.__dashboard.renders")
                    await page.wait_for_timeout(500)
                    shot = tmp_path / "dashboard.png"
                    await page.screenshot(path=str(shot), full_page=True)
                    if os.environ.get(SCREENSHOT_ENV):
                        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
                finally:
                    await browser.close()
            stop.set()
            await Cms(op).delete(strict)
    assert errors == []
    assert live == "live"
    assert cost.startswith("$")
    assert cost != "$0.00"  # the strict tenant's cloud answer
    assert "low confidence" in reasons
    assert still, "the page was reloaded"
    assert after > renders
    assert pill == "offline"
    assert nodes_kpi == "2 / 3"
    assert others == ["online", "online"]
    assert seen_after < 10
    assert shot.stat().st_size > 20_000
