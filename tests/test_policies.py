"""Scheduling: node views from the CMS, reservations, and the four policies."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from typing import Any, Literal

import pytest

from broker import Birth, BusClient, Cms, State
from broker.topics import node_key
from edge_node.admission import Admission
from edge_node.agent import NodeAgent
from edge_node.config import NodeConfig
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from gateway.nodes import DEFAULT_TPS, NodeDirectory, NodeView, Reservation
from gateway.policies import (
    POLICIES,
    CostAwarePolicy,
    FitFirstPolicy,
    HeldRequest,
    HoldingPolicy,
    LoadAwarePolicy,
    RandomPolicy,
    RequestShape,
    UnknownPolicyError,
    WeightedPolicy,
    make_policy,
    pick_timing,
)
from gateway.routing import PolicyRouter
from tests.helpers import eventually, settings


def view(node_id: str, **kw: Any) -> NodeView:
    values: dict[str, Any] = {
        "max_inflight_tokens": 4096,
        "max_tokens": 1024,
        "slots": 4,
        "capabilities": ("chat",),
    }
    values.update(kw)
    return NodeView(node_id, **values)


def random_cluster(rng: random.Random, n: int) -> list[NodeView]:
    out = []
    for i in range(n):
        slots, budget = rng.choice([(4, 16384), (2, 2048), (2, 1024)])
        cap = rng.choice([12.0, 90.0, 260.0])
        in_flight = rng.randint(0, slots)
        out.append(
            view(
                f"n{i}",
                slots=slots,
                max_inflight_tokens=budget,
                in_flight=in_flight,
                tokens_in_flight=rng.randint(0, budget) if in_flight else 0,
                max_tokens=rng.choice([256, 1024]),
                capacity_tps=cap,
                stream_tps=cap / 2,
            )
        )
    return out


# --- policies on synthetic views ------------------------------------------------------


def test_registry_and_unknown_name():
    assert set(POLICIES) == {"random", "weighted", "load_aware", "fit_first", "cost_aware"}
    assert isinstance(make_policy("fit_first"), FitFirstPolicy)
    with pytest.raises(
        UnknownPolicyError, match="cost_aware, fit_first, load_aware, random, weighted"
    ):
        make_policy("round_robin")


def test_make_policy_takes_the_policys_options_and_names_them_when_one_is_unknown():
    policy = make_policy("cost_aware", target_s=8.0, patience=1.0)
    assert isinstance(policy, CostAwarePolicy)
    assert (policy.target_s, policy.patience) == (8.0, 1.0)
    with pytest.raises(UnknownPolicyError, match=r"no option deadline; its options: .*target_s"):
        make_policy("cost_aware", deadline=8.0)
    with pytest.raises(UnknownPolicyError, match="no option target_s; its options: none"):
        make_policy("random", target_s=8.0)
    with pytest.raises(ValueError, match="target_s must be > 0"):
        make_policy("cost_aware", target_s=-1.0)


def test_random_covers_every_node_regardless_of_capacity():
    nodes = [view(f"n{i}", capacity_tps=1.0 + 100 * i, in_flight=i % 4) for i in range(10)]
    rng, req = random.Random(1), RequestShape(50, 100)
    firsts = Counter(RandomPolicy().order(req, nodes, rng, limit=1)[0].node_id for _ in range(5000))
    assert set(firsts) == {v.node_id for v in nodes}
    assert max(firsts.values()) < 1.3 * 500  # uniform: ~500 each
    full = RandomPolicy().order(req, nodes, rng, limit=None)
    assert sorted(v.node_id for v in full) == sorted(v.node_id for v in nodes)


@pytest.mark.parametrize(("n", "limit"), [(4, 1), (4, None), (40, 2)])
def test_weighted_frequencies_follow_capacity(n, limit):
    nodes = [view(f"n{i}", capacity_tps=float(1 + i % 4)) for i in range(n)]
    rng, req, draws = random.Random(2), RequestShape(50, 100), 20000
    firsts = Counter(
        WeightedPolicy().order(req, nodes, rng, limit=limit)[0].capacity_tps for _ in range(draws)
    )
    for weight in (1.0, 2.0, 3.0, 4.0):
        assert firsts[weight] / draws == pytest.approx(weight / 10, abs=0.015)
    order = WeightedPolicy().order(req, nodes, rng, limit=limit)
    assert len({v.node_id for v in order}) == len(order)  # without replacement


def test_load_aware_puts_the_least_utilised_first():
    nodes = [
        view("tokens-heavy", in_flight=1, tokens_in_flight=3000),  # max(0.25, 0.73)
        view("half", in_flight=2, tokens_in_flight=100),  # 0.5
        view("idle"),
        view("full", in_flight=4, tokens_in_flight=400),
    ]
    got = LoadAwarePolicy().order(RequestShape(50, 100), nodes, random.Random(3), limit=None)
    assert [v.node_id for v in got] == ["idle", "half", "tokens-heavy", "full"]
    idle = [view(f"i{i}") for i in range(5)]  # ties are broken at random
    firsts = {
        LoadAwarePolicy().order(RequestShape(50, 100), idle, random.Random(s), limit=1)[0].node_id
        for s in range(100)
    }
    assert firsts == {v.node_id for v in idle}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_drops_nodes_that_would_never_admit(name):
    nodes = [
        view("small-budget", max_inflight_tokens=300),
        view("short", max_tokens=128),
        view("ok"),
    ]
    for seed in range(20):
        got = make_policy(name).order(RequestShape(100, 256), nodes, random.Random(seed))
        assert [v.node_id for v in got] == ["ok"]


def test_fit_is_exactly_the_admission_rule():
    rng = random.Random(4)
    for _ in range(3000):
        slots, budget = rng.randint(1, 4), rng.randint(1, 2048)
        admission = Admission(slots, budget)
        admission.in_flight = rng.randint(0, slots)
        admission.tokens_in_flight = rng.randint(0, budget)
        v = view(
            "n",
            slots=slots,
            max_inflight_tokens=budget,
            in_flight=admission.in_flight,
            tokens_in_flight=admission.tokens_in_flight,
            max_tokens=budget,
        )
        tokens = rng.randint(1, budget + 100)
        assert v.fits(tokens, min(tokens, budget)) == (admission.refusal(tokens) is None)


@pytest.mark.parametrize("n", [1, 8, 60, 300])
def test_fit_first_never_leads_with_a_node_where_the_request_does_not_fit(n):
    rng, policy = random.Random(n), FitFirstPolicy()
    for _ in range(300):
        nodes = random_cluster(rng, n)
        req = RequestShape(rng.randint(0, 200), rng.choice([50, 100, 200, 300, 500]))
        got = policy.order(req, nodes, rng)
        fits = [v.fits(req.tokens, req.max_tokens) for v in got]
        assert fits == sorted(fits, reverse=True)  # every fitting node before the others
        if any(v.fits(req.tokens, req.max_tokens) for v in nodes):
            assert fits[0]
        assert all(v.can_take(req.tokens, req.max_tokens) for v in got)


def test_fit_first_prefers_the_faster_then_the_emptier_node():
    req, rng = RequestShape(100, 300), random.Random(5)
    fast = view("agx", capacity_tps=260.0, stream_tps=130.0, in_flight=1, tokens_in_flight=400)
    slow = view("nano", capacity_tps=90.0, stream_tps=60.0)
    assert FitFirstPolicy().order(req, [slow, fast], rng)[0].node_id == "agx"
    busy = view("busy", in_flight=2, tokens_in_flight=2000)
    empty = view("empty", in_flight=1, tokens_in_flight=100)
    assert FitFirstPolicy().order(req, [busy, empty], rng)[0].node_id == "empty"


def test_fit_first_keeps_nodes_that_do_not_fit_but_tries_them_last():
    req = RequestShape(100, 300)
    full = view("full", in_flight=4, tokens_in_flight=800)
    spent = view("spent", in_flight=1, tokens_in_flight=3900)
    unknown = view("unknown", in_flight=4, tokens_in_flight=4096, load_known=False)
    fine = view("fine", in_flight=3, tokens_in_flight=3000)
    got = FitFirstPolicy().order(req, [full, spent, unknown, fine], random.Random(6))
    assert got[0].node_id == "fine"
    assert {v.node_id for v in got[1:]} == {"full", "spent", "unknown"}


def test_fit_first_samples_and_spreads_over_many_nodes():
    rng, req = random.Random(7), RequestShape(50, 100)
    nodes = [view(f"n{i:03d}", tokens_in_flight=i) for i in range(300)]  # n000 is the best
    firsts = Counter(
        FitFirstPolicy().order(req, nodes, rng, limit=4)[0].node_id for _ in range(2000)
    )
    assert len(firsts) > 100
    assert max(firsts.values()) < 100
    least = {LoadAwarePolicy().order(req, nodes, rng, limit=4)[0].node_id for _ in range(50)}
    assert least == {"n000"}  # load_aware always herds onto the single least utilised node
    # ... yet each pick is the better of its sample: the winners lean to emptier nodes
    assert sum(int(k[1:]) for k in firsts.elements()) / 2000 < 0.4 * 300
    saturated = [view(f"s{i}", in_flight=4) for i in range(299)] + [view("free")]
    assert FitFirstPolicy().order(req, saturated, rng, limit=4)[0].node_id == "free"


def test_pick_timing_reports_microseconds():
    nodes = random_cluster(random.Random(8), 1000)
    got = pick_timing(FitFirstPolicy(), RequestShape(100, 200), nodes, rounds=200)
    assert 0 < got["p50_us"] <= got["p99_us"]


# --- the directory, from a real Mosquitto ----------------------------------------------


def birth_info(
    *,
    capabilities=("chat",),
    device="jetson-agx-orin (simulated)",
    slots=4,
    budget=4096,
    max_tokens=1024,
    model="m-1b",
) -> dict[str, Any]:
    """Shaped as ``edge_node.agent.NodeAgent._birth_info``."""
    return {
        "models": [
            {
                "id": model,
                "parameters": "1.1B",
                "context_length": 2048,
                "capabilities": list(capabilities),
            }
        ],
        "capabilities": list(capabilities),
        "expertise": ["health"],
        "device": device,
        "limits": {"concurrency": slots, "max_inflight_tokens": budget, "max_tokens": max_tokens},
        "engine": "simulated",
        "version": "0.1.0",
    }


def load(*, slots=4, in_flight=0, tokens=0, budget=4096, draining=False, tps=0.0):
    """Shaped as ``edge_node.metrics.load_record``."""
    return {
        "slots": slots,
        "free_slots": slots - in_flight,
        "in_flight": in_flight,
        "tokens_in_flight": tokens,
        "max_inflight_tokens": budget,
        "tokens_per_s": tps,
        "draining": draining,
    }


async def publish(
    cms: Cms,
    node: str,
    *,
    session: int = 10,
    online: bool = True,
    state_session: int | None = None,
    load_value: dict[str, Any] | None = None,
    load_expiry_s: float = 60,
    **info: Any,
) -> None:
    await cms.put_message(node_key(node, "birth"), Birth(session, birth_info(**info)))
    await cms.put_message(node_key(node, "state"), State(online, state_session or session))
    if load_value is not None:
        await cms.put(node_key(node, "load"), load_value, expiry_s=load_expiry_s)


LEAVES: tuple[Literal["birth", "state", "load"], ...] = ("birth", "state", "load")


async def clear(cms: Cms, nodes: list[str]) -> None:
    for node in nodes:
        for leaf in LEAVES:
            await cms.delete(node_key(node, leaf))


def ours(views: list[NodeView], prefix: str) -> set[str]:
    return {v.node_id[len(prefix) + 1 :] for v in views if v.node_id.startswith(prefix)}


def seen(nodes: NodeDirectory, node_id: str) -> NodeView:
    found = nodes.view(node_id)
    assert found is not None, node_id
    return found


async def test_candidates_from_the_cms(mosquitto, prefix):
    names = ["ok", "embed", "dead", "stale-death", "draining", "no-load", "expiring", "other-model"]
    names.append("broken")  # a birth without limits: ignored
    ids = {n: f"{prefix}-{n}" for n in names}
    async with BusClient(settings(mosquitto), f"{prefix}-pub") as bus:
        cms = Cms(bus)
        try:
            idle = load()
            await publish(cms, ids["ok"], load_value=load(in_flight=1, tokens=500, tps=400.0))
            await publish(cms, ids["embed"], capabilities=("embed",), load_value=idle)
            await publish(cms, ids["dead"], online=False, load_value=idle)
            await publish(cms, ids["stale-death"], online=False, state_session=9, load_value=idle)
            await publish(cms, ids["draining"], load_value=load(draining=True))
            await publish(cms, ids["no-load"], device="unknown-box")
            await publish(cms, ids["expiring"], load_value=idle, load_expiry_s=1)
            await publish(cms, ids["other-model"], model="m-7b", load_value=idle)
            broken = Birth(10, {"capabilities": ["chat"], "limits": "none"})
            await cms.put_message(node_key(ids["broken"], "birth"), broken)
            async with cms.mirror("slm/nodes") as mirror:
                nodes = NodeDirectory(mirror, refresh_s=0.0)  # not entered: re-reads the mirror
                every = {"ok", "stale-death", "no-load", "expiring", "other-model"}
                await eventually(lambda: ours(nodes.candidates("chat"), prefix) == every)
                assert ours(nodes.candidates("chat", model="m-7b"), prefix) == {"other-model"}
                assert ours(nodes.candidates("embed"), prefix) == {"embed"}
                ok = seen(nodes, ids["ok"])
                assert ok.load_known
                assert ok.parameters == "1.1B"
                assert ok.expertise == ("health",)
                assert (ok.free_slots, ok.free_tokens, ok.utilisation) == (3, 3596, 0.25)
                assert ok.capacity_tps == 400.0  # its measured rate beats the nominal 260
                assert seen(nodes, ids["stale-death"]).capacity_tps == 260.0  # AGX Orin
                blank = seen(nodes, ids["no-load"])
                assert not blank.load_known
                assert blank.free_slots == 0
                assert blank.utilisation == 1
                assert blank.capacity_tps == DEFAULT_TPS[1]
                assert not seen(nodes, ids["dead"]).online
                assert nodes.view(ids["broken"]) is None
                await eventually(
                    lambda: not seen(nodes, ids["expiring"]).load_known, 3, "load expired"
                )
                chat = [v for v in nodes.candidates("chat") if v.node_id.startswith(prefix)]
                assert ids["expiring"] in {v.node_id for v in chat}
                order = FitFirstPolicy().order(RequestShape(100, 200), chat, random.Random(0))
                assert {v.node_id for v in order[-2:]} == {ids["expiring"], ids["no-load"]}
        finally:
            await clear(cms, list(ids.values()))


async def test_reservations_count_until_the_load_shows_them(mosquitto, prefix):
    node = f"{prefix}-r"
    async with BusClient(settings(mosquitto), f"{prefix}-pub") as bus:
        cms = Cms(bus)
        try:
            await publish(cms, node, load_value=load())
            async with cms.mirror("slm/nodes") as mirror:
                # settle 0: the node's next record is trusted to count the request itself;
                # settle 30 s: a record that soon may predate it, so the reservation stays.
                for settle_s, in_flight in ((0.0, 1), (30.0, 2)):
                    await cms.put(node_key(node, "load"), load(), expiry_s=60)
                    async with NodeDirectory(mirror, settle_s=settle_s) as nodes:
                        await eventually(lambda: nodes.view(node) is not None)
                        await eventually(lambda: seen(nodes, node).in_flight == 0)
                        held = nodes.reserve(node, 600)
                        v = seen(nodes, node)
                        assert (v.free_slots, v.free_tokens, v.reserved) == (3, 4096 - 600, 1)
                        assert v in nodes.candidates("chat")  # what policies see
                        await cms.put(node_key(node, "load"), load(in_flight=1, tokens=600))
                        await eventually(lambda: seen(nodes, node).in_flight == in_flight)  # noqa: B023
                        assert seen(nodes, node).tokens_in_flight == 600 * in_flight
                        nodes.release(held)
                        nodes.release(held)  # harmless
                        v = seen(nodes, node)
                        assert (v.in_flight, v.tokens_in_flight, v.reserved) == (1, 600, 0)
        finally:
            await clear(cms, [node])


async def test_a_real_node_in_the_directory_then_gone(mosquitto, prefix):
    engine = SimulatedEngine(SimulatedEngineConfig(profile="jetson-orin-nano", decode_tps=400))
    config = NodeConfig.model_validate(
        {
            "node_id": prefix,
            "bus": settings(mosquitto).model_dump(),
            "engine": {"type": "simulated", "profile": "jetson-orin-nano"},
            "capabilities": ["chat"],
            "limits": {"max_inflight_tokens": 2048, "max_tokens": 512},
            "load_interval_s": 0.05,
            "load_expiry_s": 3,  # an idle node's first load comes at expiry / 3
        }
    )
    agent = NodeAgent(config, engine)
    stop = asyncio.Event()
    async with (
        BusClient(settings(mosquitto), f"{prefix}-gw") as bus,
        Cms(bus).mirror("slm/nodes") as mirror,
        NodeDirectory(mirror) as nodes,
    ):
        task = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(agent.ready.wait(), 10)
            await eventually(lambda: nodes.view(prefix) is not None, what="birth seen")
            await eventually(lambda: seen(nodes, prefix).load_known, what="load seen")
            v = seen(nodes, prefix)
            assert v.online
            assert v in nodes.candidates("chat")
            assert (v.slots, v.max_inflight_tokens, v.max_tokens) == (2, 2048, 512)
            assert v.capacity_tps == 90.0  # the Orin Nano's nominal rate, matched by profile
            assert v.fits(1500, 512)
            assert not v.fits(2100, 512)
            assert not v.can_take(600, 600)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        await eventually(
            lambda: prefix not in {c.node_id for c in nodes.candidates("chat")},
            what="offline node dropped",
        )
        assert not seen(nodes, prefix).online
        await clear(Cms(bus), [prefix])


# --- cost_aware: hold instead of the cloud -------------------------------------------


def test_cost_aware_holds_by_its_latency_objective():
    policy = make_policy("cost_aware")
    assert isinstance(policy, CostAwarePolicy)
    assert isinstance(policy, HoldingPolicy)
    assert not isinstance(make_policy("fit_first"), HoldingPolicy)
    free = view("free", slots=2, in_flight=1, capacity_tps=90.0, stream_tps=60.0)
    full = view("full", slots=2, in_flight=2, capacity_tps=90.0, stream_tps=60.0)
    big, small = RequestShape(80, 500), RequestShape(80, 50)
    assert policy.hold_s(big, [free, full]) == 0.0  # a node fits: no hold
    assert policy.hold_s(RequestShape(80, 2000), [full]) == 0.0  # no node ever takes it
    # the cloud answers 50 tokens in 0.8 + 50 / 50 = 1.8 s: held until it would miss 5.5 s
    assert policy.hold_s(small, [full]) == pytest.approx(5.5 - 1.8)
    assert policy.hold_s(RequestShape(80, 200), [full]) == pytest.approx(5.5 - 4.8)
    # 500 tokens take 10.8 s in the cloud: late either way, so it may wait 2 x 10.8 s
    assert policy.hold_s(big, [full]) == pytest.approx(2 * 10.8)
    patient = CostAwarePolicy(target_s=8.0, patience=0.5)
    assert patient.hold_s(RequestShape(80, 300), [full]) == pytest.approx(8.0 - 6.8)
    assert patient.hold_s(big, [full]) == pytest.approx(0.5 * 10.8)
    # the same order as fit_first
    nodes = [free, full]
    assert [v.node_id for v in policy.order(big, nodes, random.Random(1))] == [
        v.node_id for v in FitFirstPolicy().order(big, nodes, random.Random(1))
    ]
    with pytest.raises(ValueError, match="cloud_tps"):
        CostAwarePolicy(cloud_tps=0)
    with pytest.raises(ValueError, match="target_s"):
        CostAwarePolicy(target_s=0)


def agx(free: int, **kw: Any) -> NodeView:
    return view("agx", slots=4, in_flight=4 - free, capacity_tps=260.0, stream_tps=130.0, **kw)


def nano(node_id: str, free: int, **kw: Any) -> NodeView:
    return view(node_id, slots=2, in_flight=2 - free, capacity_tps=90.0, stream_tps=60.0, **kw)


def placements(
    held: list[HeldRequest], nodes: list[NodeView], policy: CostAwarePolicy | None = None
) -> dict[int, str]:
    policy = policy or CostAwarePolicy()
    return {h.key: v.node_id for h, v in policy.place_held(held, nodes, random.Random(0))}


def test_place_held_gives_a_fast_slot_to_the_large_request_that_meets_the_objective():
    big, small = (
        HeldRequest(1, RequestShape(80, 500), 0.5),
        HeldRequest(2, RequestShape(80, 50), 0.5),
    )
    fast = view("agx", slots=2, in_flight=1, capacity_tps=260.0, stream_tps=130.0)
    # 500 tokens as the second of two streams on the AGX: 0.5 + 500 / 130 = 4.3 s <= 5.5;
    # on the Nano 0.5 + 500 / 45 = 11.6 s; the small one is in time there (1.6 s)
    assert placements([small, big], [fast, nano("nano", 1)]) == {1: "agx", 2: "nano"}
    # as the fourth stream of a busy AGX (500 / 65 = 7.7 s) it is not in time: the small
    # one, in time anywhere, takes the faster slot and the large one the other
    assert placements([small, big], [agx(1), nano("nano", 1)]) == {2: "agx", 1: "nano"}


def test_place_held_then_serves_the_smallest_first_when_no_one_can_meet_the_objective():
    big, small = (
        HeldRequest(1, RequestShape(80, 500), 1.0),
        HeldRequest(2, RequestShape(80, 50), 1.0),
    )
    one_nano = [nano("nano", 1, tokens_in_flight=200)]
    # the big one would take 1 + 580 / 60 s there: the slot goes to the small one, in time
    assert placements([big, small], one_nano) == {2: "nano"}
    late = HeldRequest(3, RequestShape(80, 50), 5.0)  # too late for the objective anyway
    assert placements([big, late], one_nano) == {3: "nano"}  # smallest first
    assert placements([big], one_nano) == {1: "nano"}  # late, but the edge costs nothing


def test_place_held_counts_each_placement_in_the_next():
    held = [HeldRequest(k, RequestShape(80, 100), 0.0) for k in range(5)]
    nodes = [agx(2), nano("n0", 1), nano("n1", 0)]
    got = placements(held, nodes)
    assert len(got) == 3  # three free slots
    assert Counter(got.values()) == {"agx": 2, "n0": 1}
    assert placements(held, [agx(0), nano("n0", 0)]) == {}
    budget = [agx(2, max_inflight_tokens=700, tokens_in_flight=400)]  # 300 tokens left
    assert len(placements(held, budget)) == 1  # the second would pass the token budget


class ListDirectory:
    """A node directory over a list of views (unit tests of PolicyRouter's holds)."""

    def __init__(self, views: list[NodeView]) -> None:
        self.views = {v.node_id: v for v in views}
        self.listeners: list[Any] = []
        self.reserved: list[tuple[str, int]] = []

    def candidates(self, capability: str, model: str | None = None) -> list[NodeView]:
        return list(self.views.values())

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def set(self, node_id: str, **kw: Any) -> None:
        self.views[node_id] = dataclasses.replace(self.views[node_id], **kw)
        for listener in self.listeners:
            listener()

    def reserve(self, node_id: str, tokens: int) -> Reservation:
        """As NodeDirectory: the reservation counts in the view at once."""
        self.reserved.append((node_id, tokens))
        v = self.views[node_id]
        self.set(node_id, in_flight=v.in_flight + 1, tokens_in_flight=v.tokens_in_flight + tokens)
        return Reservation(node_id, tokens, 0.0, len(self.reserved))

    def release(self, reservation: Reservation) -> None:
        self.reserved.remove((reservation.node_id, reservation.tokens))
        v = self.views[reservation.node_id]
        self.set(
            reservation.node_id,
            in_flight=v.in_flight - 1,
            tokens_in_flight=v.tokens_in_flight - reservation.tokens,
        )


def full_agx(**kw: Any) -> NodeView:
    return view("agx", slots=4, in_flight=4, capacity_tps=2600.0, stream_tps=1300.0, **kw)


async def test_policy_router_holds_then_places_as_the_policy_says():
    directory = ListDirectory([full_agx()])
    # x10 compressed: cloud 0.08 s + tokens / 500, objective 0.55 s; 500 tokens take
    # 1.08 s in the cloud, more than the objective: held 0.2 x 1.08 s
    policy = CostAwarePolicy(cloud_base_s=0.08, cloud_tps=500.0, target_s=0.55, patience=0.2)
    router = PolicyRouter(directory, policy, "c")

    async def held(max_tokens: int) -> tuple[list[NodeView], Reservation]:
        order = await router.order_when_fit(80, max_tokens, "general")
        node = order[0].node_id if order else "cloud"
        return order, router.reserve(node, 80 + max_tokens)  # as the orchestrator does next

    small = asyncio.create_task(held(50))
    big = asyncio.create_task(held(500))
    await asyncio.sleep(0.02)
    assert not big.done()
    assert not small.done()
    directory.set("agx", in_flight=1)  # three slots free: the large request first (in
    await asyncio.sleep(0.01)  # time as the second stream: 500 / 1300 s), then the small
    assert [v.node_id for v in (await big)[0]] == ["agx"]
    assert [v.node_id for v in (await small)[0]] == ["agx"]
    # reserved when placed, largest first; the orchestrator's reserve got them back
    assert directory.reserved == [("agx", 580), ("agx", 130)]
    assert (big.result()[1].serial, small.result()[1].serial) == (1, 2)


async def test_policy_router_sends_a_request_to_the_cloud_when_its_hold_ends():
    directory = ListDirectory([full_agx()])
    policy = CostAwarePolicy(cloud_base_s=0.08, cloud_tps=500.0, target_s=0.3)
    router = PolicyRouter(directory, policy, "c")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await router.order_when_fit(80, 50, "general") == []  # held 0.3 - 0.18 s
    assert 0.1 <= loop.time() - started < 1.0
    assert directory.reserved == []


async def test_policy_router_without_a_hold_orders_at_once():
    directory = ListDirectory([full_agx()])
    router = PolicyRouter(directory, "load_aware", "c")
    assert [v.node_id for v in await router.order_when_fit(80, 500, "general")] == ["agx"]
    assert directory.listeners == []  # only holding policies listen
