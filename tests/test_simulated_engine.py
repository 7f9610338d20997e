"""The simulated engine takes the time its device profile says, and says it is simulated.

Real-time tests use fast overridden rates so that each stays well under a second;
the exact timing model is checked with an injected clock.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from broker import ChatMessage
from edge_node.engines.base import Generation, GenerationRequest
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from edge_node.profiles import PROFILES, DeviceProfile, Sourced, UnknownProfileError, get_profile

PROMPT = [ChatMessage(role="user", content="one two three")]  # ceil(3 * 1.3) + 4 = 8 tokens


def fast(**overrides: object) -> SimulatedEngineConfig:
    """A fast custom profile: Pi 5 with overridden rates (prefill 1000, decode 100 tok/s)."""
    values: dict[str, object] = {
        "profile": "raspberry-pi-5",
        "prefill_tps": 1000.0,
        "decode_tps": 100.0,
        "concurrency": 2,
        "aggregate_speedup": 1.0,
    }
    values.update(overrides)
    return SimulatedEngineConfig.model_validate(values)


def run(
    engine: SimulatedEngine, max_tokens: int, cancel: threading.Event | None = None
) -> tuple[Generation, float, list[str]]:
    pieces: list[str] = []
    started = time.perf_counter()
    gen = engine.generate(
        GenerationRequest(messages=PROMPT, max_tokens=max_tokens),
        pieces.append,
        cancel or threading.Event(),
    )
    return gen, time.perf_counter() - started, pieces


class FakeClock:
    """Simulated time: ``sleep`` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, event: threading.Event, dt: float) -> bool:
        self.now += dt
        return event.is_set()


def test_timing_model_exact_with_injected_clock() -> None:
    fake = FakeClock()
    engine = SimulatedEngine(fast(), sleep=fake.sleep, clock=fake.clock)
    gen, _, pieces = run(engine, 50)
    prefill = 8 / 1000.0
    assert gen.prompt_tokens == 8
    assert len(pieces) == gen.completion_tokens == 50
    assert gen.finish_reason == "length"
    assert gen.ttft_ms == pytest.approx(prefill * 1e3)
    assert gen.total_ms == pytest.approx((prefill + 49 / 100.0) * 1e3)


def test_timing_honesty_in_real_time() -> None:
    engine = SimulatedEngine(fast())
    gen, elapsed, _ = run(engine, 30)
    expected = 8 / 1000.0 + 29 / 100.0  # prefill, then one token per 10 ms
    assert expected - 0.002 <= elapsed <= expected + 0.06
    assert gen.total_ms / 1e3 == pytest.approx(elapsed, abs=0.01)
    assert gen.ttft_ms / 1e3 == pytest.approx(8 / 1000.0, abs=0.02)


def test_time_scale_compresses_the_schedule_exactly() -> None:
    """x50: the same simulated schedule in 1/50 of the time; tokens come out in ticks."""
    fake = FakeClock()
    wakes: list[float] = []

    def sleep(event: threading.Event, dt: float) -> bool:
        wakes.append(dt)
        return fake.sleep(event, dt)

    engine = SimulatedEngine(fast(time_scale=50.0, tick_s=0.002), sleep=sleep, clock=fake.clock)
    gen, _, pieces = run(engine, 50)
    assert len(pieces) == gen.completion_tokens == 50
    assert gen.ttft_ms == pytest.approx(8 / 1000.0 / 50 * 1e3)
    assert gen.total_ms == pytest.approx((8 / 1000.0 + 49 / 100.0) / 50 * 1e3)
    # one token is due every 0.2 ms of wall time; released every 2 ms, not per token
    assert len(wakes) < 50 / 5
    assert engine.info.extra["time_scale"] == 50.0


def test_time_scale_in_real_time() -> None:
    engine = SimulatedEngine(fast(time_scale=20.0))
    gen, elapsed, _ = run(engine, 200)
    expected = (8 / 1000.0 + 199 / 100.0) / 20  # ~0.1 s for ~2 simulated seconds
    assert expected - 0.002 <= elapsed <= expected + 0.06
    assert gen.completion_tokens == 200


def test_concurrent_generations_share_the_device() -> None:
    engine = SimulatedEngine(fast())  # aggregate_speedup 1: two streams, half rate each
    _, alone, _ = run(engine, 20)
    barrier = threading.Barrier(2)

    def one() -> float:
        barrier.wait()
        return run(engine, 20)[1]

    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda _: one(), range(2)))
    expected = 8 / 500.0 + 19 / 50.0  # share(2) = min(1, 1/2)
    for elapsed in together:
        assert elapsed > 1.6 * alone
        assert elapsed == pytest.approx(expected, abs=0.08)
    assert engine.running == 0


def test_share_formula() -> None:
    profile = fast(aggregate_speedup=1.5, concurrency=4).resolve_profile()
    assert [profile.decode_rate(n) for n in (1, 2, 3, 4)] == pytest.approx(
        [100.0, 75.0, 50.0, 37.5]
    )
    assert profile.prefill_rate(2) == pytest.approx(750.0)
    assert profile.decode_tps.source == "override in the engine configuration"
    assert profile.memory_gb == PROFILES["raspberry-pi-5"].memory_gb


def test_cancellation_stops_within_one_token_time() -> None:
    engine = SimulatedEngine(fast(decode_tps=20.0))  # one token every 50 ms
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_now() -> None:
        cancelled_at.append(time.perf_counter())
        cancel.set()

    timer = threading.Timer(0.07, cancel_now)  # between the 2nd (58 ms) and 3rd (108 ms) token
    timer.start()

    gen, _, _ = run(engine, 100, cancel)
    returned = time.perf_counter()
    timer.join()
    assert gen.finish_reason == "cancelled"
    assert gen.completion_tokens == 2
    assert returned - cancelled_at[0] < 0.05
    assert engine.running == 0


def test_cancelled_while_waiting_for_a_slot() -> None:
    engine = SimulatedEngine(fast(concurrency=1, decode_tps=20.0))
    stop_first = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run, engine, 100, stop_first)
        time.sleep(0.05)
        cancel = threading.Event()
        cancel.set()
        gen, elapsed, pieces = run(engine, 10, cancel)
        stop_first.set()
        assert first.result()[0].finish_reason == "cancelled"
    assert gen.finish_reason == "cancelled"
    assert gen.completion_tokens == 0
    assert pieces == []
    assert elapsed < 0.1


def test_output_is_labelled_simulated() -> None:
    fake = FakeClock()
    engine = SimulatedEngine(fast(completion_tokens=3), sleep=fake.sleep, clock=fake.clock)
    gen, _, pieces = run(engine, 10)
    assert gen.simulated is True
    assert gen.text == "sim sim sim " == "".join(pieces)
    assert gen.finish_reason == "stop"
    assert gen.confidence is not None
    assert 0.0 <= gen.confidence < 1.0
    assert run(engine, 10)[0].confidence == gen.confidence  # deterministic per prompt
    info = engine.info
    assert (info.architecture, info.quantization, info.context_length) == ("simulated", "n/a", 4096)
    assert info.model_id == "simulated-1b"
    assert info.extra["simulated"] is True
    assert info.extra["profile"] == "raspberry-pi-5"
    assert info.extra["decode_tps"] == 100.0
    assert engine.slots == 2


def test_prompt_token_estimate() -> None:
    engine = SimulatedEngine(SimulatedEngineConfig(profile="jetson-agx-orin"))
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content=" ".join(["word"] * 10)),
    ]
    assert engine.count_prompt_tokens(messages) == 3 + 13 + 2 * 4
    assert engine.slots == PROFILES["jetson-agx-orin"].concurrency.value


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(UnknownProfileError) as err:
        get_profile("jetson-nano-2015")
    for name in ("jetson-agx-orin", "jetson-orin-nano", "raspberry-pi-5"):
        assert name in str(err.value)
    with pytest.raises(ValidationError, match="raspberry-pi-5"):
        SimulatedEngineConfig(profile="pi-zero")


@pytest.mark.parametrize(
    "bad",
    [
        {"profile": "raspberry-pi-5", "decode_tokens": 10},  # unknown field (typo)
        {"profile": "raspberry-pi-5", "decode_tps": 0},
        {"profile": "raspberry-pi-5", "concurrency": 0},
        {"profile": "raspberry-pi-5", "aggregate_speedup": 0.5},
        {"profile": "raspberry-pi-5", "time_scale": 0},
        {"type": "llama_cpp", "profile": "raspberry-pi-5"},
        {},
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SimulatedEngineConfig.model_validate(bad)


def test_every_profile_figure_has_a_source() -> None:
    assert {"jetson-agx-orin", "jetson-orin-nano", "raspberry-pi-5"} <= set(PROFILES)
    for profile in PROFILES.values():
        figures: list[Sourced[float] | Sourced[int] | None] = [
            profile.prefill_tps,
            profile.decode_tps,
            profile.concurrency,
            profile.aggregate_speedup,
            profile.memory_gb,
            profile.power_w,
        ]
        for figure in figures:
            assert figure is None or figure.source.strip()
    with pytest.raises(ValueError, match="source"):
        Sourced(1.0, " ")
    with pytest.raises(ValueError, match="positive"):
        DeviceProfile(
            name="x",
            description="x",
            reference_model="x",
            prefill_tps=Sourced(0.0, "s"),
            decode_tps=Sourced(1.0, "s"),
            concurrency=Sourced(1, "s"),
            aggregate_speedup=Sourced(1.0, "s"),
            memory_gb=Sourced(1.0, "s"),
        )
