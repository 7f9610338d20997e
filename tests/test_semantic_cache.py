"""Semantic cache: unit tests with a fake embedder, then the threshold calibration with
the real all-MiniLM-L6-v2 encoder (``gateway.encoder.SentenceEncoder``).

**Calibration data**: the labelled pairs below, embedded by
``gateway.encoder.SentenceEncoder`` (pure NumPy; its docstring measures 2.2e-7 from
sentence-transformers), cosine similarity of each pair:

- ``NEAR_DUPLICATES`` (17, must hit): the same question reworded around the same
  content words. Cosine 0.890 to 0.996.
- ``PARAPHRASES`` (26, measured, not required): synonyms and restructuring. Cosine
  0.733 to 0.983; 2 of 26 hit (the two that reword only scaffolding).
- ``DIFFERENT`` (29, must not hit): related questions with one slot changed, and
  same-topic rewrites. Cosine 0.524 to **0.992** ("Is the road to/from the airport
  congested?"); "Convert 5 km to miles" / "Convert 5 miles to km" is 0.987.

No cosine threshold separates them: the highest different pair (0.9925) is above 15
of 17 near-duplicates and all 26 paraphrases, so a threshold alone would have to
exceed it and would then serve 2 near-duplicates; at 0.85 alone, 10 of 29 different
pairs would be false hits. The cache therefore verifies every retrieved candidate
with :func:`gateway.cache.same_question` (same numbers, same content words in the
same order), which refuses all 29 different pairs whatever their cosine.
``DEFAULT_THRESHOLD = 0.85`` sits 0.040 below the lowest near-duplicate (0.890, "Is
it safe to run at 30°C?" / "Can you tell me if it is safe to run at 30 °C?"), so
every near-duplicate is retrieved with room for wording noise, and retrieval stays
limited to pairs the encoder also finds close.

A known limit, kept visible in ``AUXILIARY_ONLY``: questions that differ only in
auxiliaries ("Does it rain in Lisbon in May?" / "Is it raining in Lisbon in May?",
0.965) pass the verification, and their cosine (0.770 to 0.965) overlaps the
near-duplicates', so neither refuses them.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.cache import (
    DEFAULT_THRESHOLD,
    CachedAnswer,
    SemanticCache,
    cache_key,
    normalise,
    prompt_hash,
    same_question,
    scope_key,
)


def pairs(text: str) -> list[tuple[str, str]]:
    """Two lines a pair, the second indented."""
    lines = [line.strip() for line in text.strip().splitlines()]
    assert len(lines) % 2 == 0
    return list(zip(lines[::2], lines[1::2], strict=True))


NEAR_DUPLICATES = pairs("""
Can you tell me what my heart rate is?
    What is my heart rate?
Please tell me what the air quality near the stadium is.
    What's the air quality near the stadium?
How do I reset my smartwatch?
    How can I reset my smart watch?
Explain why the sky is blue.
    Why is the sky blue?
What is the weather in Lisbon tomorrow?
    What's the weather in Lisbon tomorrow?
Could you tell me how a heat pump works?
    How does a heat pump work?
What is the traffic like on Elm Road?
    Can you tell me what the traffic is like on Elm Road?
How many steps have I walked today?
    Tell me how many steps I have walked today.
Is the park crowded right now?
    Could you tell me if the park is crowded right now?
What was my average heart rate during my run?
    What was my average heart rate during the run?
Give me tips for running in hot weather
    Can you give me some tips for running in hot weather?
What does the amber traffic light mean?
    What does an amber traffic light mean?
How much sleep do I need?
    Can you tell me how much sleep I need?
Where is the nearest EV charging station?
    Where's the nearest EV charging station?
Is it going to rain this afternoon?
    Please tell me: is it going to rain this afternoon?
Convert 5 km to miles
    Please convert 5 km to miles.
Is it safe to run at 30°C?
    Can you tell me if it is safe to run at 30 °C?
""")

PARAPHRASES = pairs("""
What's the air quality near the stadium tonight?
    How is the air quality around the stadium this evening?
How many steps have I walked today?
    What is my step count for today?
Is the road to the airport congested right now?
    Is there heavy traffic on the way to the airport at the moment?
What was my average heart rate during my run?
    What was my mean heart rate while I was running?
How do I reset my smartwatch?
    How can I reset my smart watch?
When does the next bus leave from Central Station?
    What time does the next bus depart from Central Station?
How much sleep did I get last night?
    How many hours did I sleep last night?
Is it going to rain this afternoon?
    Will it rain this afternoon?
Where is the nearest electric vehicle charging station?
    Where can I find the closest EV charging point?
What are the symptoms of dehydration?
    What are the signs of dehydration?
How many calories did I burn on my bike ride?
    How many calories did my bike ride burn?
Which parking garage downtown has free spaces?
    Which downtown car park has spaces available?
Explain why the sky is blue.
    Why is the sky blue?
Give me tips for running in hot weather.
    What are some tips for running when it is hot?
What does the amber traffic light mean?
    What is the meaning of an amber traffic light?
How noisy is it near the construction site?
    What is the noise level close to the construction site?
Summarise my workout from this morning.
    Give me a summary of this morning's workout.
Is the pedestrian crossing on Main Street busy?
    How busy is the Main Street pedestrian crossing?
Can you tell me the current temperature outside?
    What's the temperature outside right now?
How far is it to the nearest hospital?
    What is the distance to the closest hospital?
Is the park crowded at the moment?
    Are there many people in the park right now?
What should I drink after a long run?
    What's a good drink to have after running a long distance?
How loud is the traffic on Elm Road?
    What is the traffic noise level on Elm Road?
When is the best time to go for a walk today?
    What time today is best for a walk?
How do I stretch my calves?
    Please explain how to stretch my calves.
What is the UV index this afternoon?
    How strong is the UV radiation this afternoon?
""")

DIFFERENT = pairs("""
What is my heart rate?
    What is my blood pressure?
Convert 5 km to miles
    Convert 5 miles to km
Is it safe to run at 30°C?
    Is it safe to run at 40°C?
What's the air quality near the stadium tonight?
    What's the noise level near the stadium tonight?
How many steps did I walk today?
    How many steps did I walk yesterday?
When does the next bus leave from Central Station?
    When does the last bus leave from Central Station?
Is the road to the airport congested?
    Is the road from the airport congested?
What was my average heart rate during my run?
    What was my maximum heart rate during my run?
How do I reset my smartwatch?
    How do I charge my smartwatch?
Will it rain this afternoon?
    Will it snow this afternoon?
What are the symptoms of dehydration?
    What are the symptoms of heatstroke?
How many calories did I burn on my bike ride?
    How many calories did I burn on my run?
Turn on the lights in the kitchen
    Turn off the lights in the kitchen
Where is the nearest hospital?
    Where is the nearest pharmacy?
What is 15% of 80?
    What is 15% of 60?
Which parking garage downtown has free spaces?
    Which parking garage downtown is closest?
How long does it take to walk 2 km?
    How long does it take to cycle 2 km?
Set an alarm for 6 am
    Set an alarm for 7 am
How do I get from the stadium to the station?
    What's the quickest route from the station to the stadium?
What was my resting heart rate last week?
    How high did my heart rate get during yesterday's run?
Is the air quality good enough to go jogging tonight?
    Will the pollen count be high when I go jogging tonight?
Tell me how crowded the train station is right now
    Tell me how crowded the train station usually gets on weekdays
Is it safe to run outside today?
    Is it safe to run outside today if I have asthma?
How do I pair my heart rate strap with my phone?
    How do I unpair my heart rate strap from my phone?
What time does the pharmacy on Main Street open?
    What time does the pharmacy on Main Street close?
How many people visited the museum this week?
    How many people are in the museum at the moment?
What's the fastest way to lower my heart rate?
    What makes my heart rate go up so fast?
Should I wear a mask outside given today's pollution?
    How bad was the pollution outside last month?
How can I pair my earbuds?
    Can I pair my earbuds?
""")

AUXILIARY_ONLY = [  # a known limit: verification accepts these; see the module docstring
    ("Does it rain in Lisbon in May?", "Is it raining in Lisbon in May?"),
    ("Should I run today?", "Can I run today?"),
    ("Is the heat pump working?", "Does the heat pump work?"),
    ("Do I need a jacket?", "I need a jacket."),
]

# -- a deterministic fake embedder ------------------------------------------------------

FAKE_DIM = 64


class BagOfWords:
    """Each word adds a fixed pseudo-random unit vector (sha256-seeded); rows normalised.
    Texts sharing most words are close; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    @staticmethod
    def word(word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        v = np.random.default_rng(seed).standard_normal(FAKE_DIM)
        return v / np.linalg.norm(v)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self.lock:
            self.calls += 1
        rows = [
            sum((self.word(w) for w in re.findall(r"\w+", t.lower())), np.zeros(FAKE_DIM))
            for t in texts
        ]
        out = np.array(rows, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)  # type: ignore[no-any-return]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str, model: str = "smollm2-135m-instruct") -> CachedAnswer:
    return CachedAnswer(
        text=text, model=model, prompt_tokens=12, completion_tokens=30, node="orin-1"
    )


SCOPE = "tenant-a/smollm2"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def embed() -> BagOfWords:
    return BagOfWords()


@pytest.fixture
def cache(embed: BagOfWords, clock: Clock) -> SemanticCache:
    return SemanticCache(embed, threshold=0.6, ttl_s=100.0, max_entries=1000, clock=clock)


# -- unit tests -------------------------------------------------------------------------


def test_exact_match_skips_the_embedding(cache: SemanticCache, embed: BagOfWords) -> None:
    cache.store("What is my heart rate?", SCOPE, answer("72 bpm"))
    calls = embed.calls
    hit = cache.lookup("  what is my HEART   rate ", SCOPE)
    assert hit is not None
    assert (hit.exact, hit.similarity, hit.answer.text) == (True, 1.0, "72 bpm")
    assert embed.calls == calls
    assert cache.stats["exact_hits"] == 1


def test_near_duplicate_is_answered_from_the_vector_index(cache: SemanticCache) -> None:
    cache.store("What is the air quality near the stadium?", SCOPE, answer("AQI 42"))
    hit = cache.lookup("Can you tell me what the air quality near the stadium is, please?", SCOPE)
    assert hit is not None
    assert not hit.exact
    assert 0.6 <= hit.similarity < 1.0
    assert hit.answer.text == "AQI 42"


def test_a_changed_slot_above_the_threshold_is_refused(embed: BagOfWords, clock: Clock) -> None:
    for verify, expect_hit in ((same_question, False), (None, True)):
        cache = SemanticCache(
            embed, threshold=0.6, ttl_s=100, max_entries=10, clock=clock, verify=verify
        )
        cache.store("How many steps did I walk today?", SCOPE, answer("8000"))
        hit = cache.lookup("How many steps did I walk yesterday?", SCOPE)
        assert (hit is not None) is expect_hit  # the fake rates them 0.86: only verify refuses
    assert cache.stats["rejected"] == 0


def test_rejections_and_misses_are_counted(cache: SemanticCache) -> None:
    cache.store("How many steps did I walk today?", SCOPE, answer("8000"))
    assert cache.lookup("How many steps did I walk yesterday?", SCOPE) is None
    assert cache.lookup("Where is the nearest pharmacy?", SCOPE) is None
    stats = cache.stats
    assert (stats["rejected"], stats["misses"], stats["hits"], stats["entries"]) == (1, 2, 0, 1)


def test_search_looks_past_refused_candidates(clock: Clock) -> None:
    """Twelve alarms rank above the one whose number matches: the search widens."""
    base = np.ones(FAKE_DIM, dtype=np.float32)
    table = {
        f"Set an alarm for {n} am": base + 0.01 * n * np.eye(FAKE_DIM, dtype=np.float32)[n]
        for n in range(1, 13)
    }
    table["Set an alarm for 20 am"] = base + np.eye(FAKE_DIM, dtype=np.float32)[20]
    table["Please set an alarm for 20 am"] = base

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.array([table[t] for t in texts], dtype=np.float32)

    cache = SemanticCache(embed, threshold=0.5, ttl_s=100, max_entries=100, clock=clock)
    for text in table:
        if not text.startswith("Please"):
            cache.store(text, SCOPE, answer(text))
    hit = cache.lookup("Please set an alarm for 20 am", SCOPE)
    assert hit is not None
    assert hit.answer.text == "Set an alarm for 20 am"
    assert cache.stats["rejected"] == 12


def test_entries_expire_on_lookup(cache: SemanticCache, clock: Clock) -> None:
    cache.store("What is my heart rate?", SCOPE, answer("72 bpm"))
    clock.now += 99.9
    assert cache.lookup("What is my heart rate?", SCOPE) is not None
    clock.now += 0.1
    assert cache.lookup("What is my heart rate?", SCOPE) is None
    assert cache.stats["expired"] == 1
    assert len(cache) == 0


def test_an_expired_candidate_gives_way_to_a_fresh_one(cache: SemanticCache, clock: Clock) -> None:
    cache.store("Tell me the air quality near the stadium, please", SCOPE, answer("old"))
    clock.now += 50
    cache.store("Could you tell me the air quality near the stadium", SCOPE, answer("fresh"))
    clock.now += 60  # the first is 110 s old, the second 60 s
    hit = cache.lookup("Please tell me the air quality near the stadium", SCOPE)
    assert hit is not None
    assert hit.answer.text == "fresh"
    assert cache.stats["expired"] == 1


def test_sweep_removes_expired_entries_from_the_index(cache: SemanticCache, clock: Clock) -> None:
    old = ["What is my heart rate?", "Where is the nearest pharmacy?", "Convert 5 km to miles"]
    for text in old:
        cache.store(text, SCOPE, answer(text))
    clock.now += 60
    cache.store("Will it rain this afternoon?", SCOPE, answer("no"))
    clock.now += 50
    assert cache.sweep() == 3
    assert len(cache) == 1
    assert cache.sweep() == 0
    assert all(cache.lookup(text, SCOPE) is None for text in old)
    assert cache.stats["expired"] == 3  # the lookups found nothing left to expire
    assert cache.lookup("Will it rain this afternoon", SCOPE) is not None


def test_the_oldest_entry_is_evicted_beyond_max_entries(embed: BagOfWords, clock: Clock) -> None:
    cache = SemanticCache(embed, threshold=0.6, ttl_s=100, max_entries=3, clock=clock)
    texts = ["What is my heart rate?", "Where is the nearest pharmacy?", "Convert 5 km to miles"]
    for text in texts:
        cache.store(text, SCOPE, answer(text))
        clock.now += 1
    cache.store(texts[0], SCOPE, answer("refreshed"))  # storing again makes it the newest
    cache.store("Will it rain this afternoon?", SCOPE, answer("no"))
    assert len(cache) == 3
    assert cache.stats["evictions"] == 1
    assert cache.lookup(texts[1], SCOPE) is None
    hit = cache.lookup(texts[0], SCOPE)
    assert hit is not None
    assert hit.answer.text == "refreshed"


def test_answers_never_cross_tenants_models_or_lengths(cache: SemanticCache) -> None:
    own = scope_key("tenant-a", "smollm2", max_tokens=256)
    assert own is not None
    cache.store("What is my heart rate?", own, answer("72 bpm"))
    for other in (
        scope_key("tenant-b", "smollm2", max_tokens=256),
        scope_key("tenant-a", "gemma3-270m", max_tokens=256),
        scope_key("tenant-a", "smollm2", max_tokens=1024),
    ):
        assert other is not None
        assert cache.lookup("What is my heart rate?", other) is None
        assert cache.lookup("Can you tell me what my heart rate is?", other) is None
    assert cache.lookup("What is my heart rate?", own) is not None


def test_scope_key_refuses_hot_sampling_and_no_cache() -> None:
    assert scope_key("t", "m", no_cache=True) is None
    assert scope_key("t", "m", temperature=0.7) is None
    assert scope_key("t", "m", temperature=0.0) == scope_key("t", "m", temperature=0.3)
    assert scope_key("a/b", "c") != scope_key("a", "b/c")
    assert scope_key("a", "b", max_tokens=None) != scope_key("a", "b", max_tokens=64)


def test_cache_key_of_a_single_turn_is_the_question() -> None:
    assert cache_key([("user", " What is my heart rate? ")]) == "What is my heart rate?"
    with pytest.raises(ValueError, match="without a user message"):
        cache_key([("system", "You are terse.")])


def test_a_follow_up_in_another_conversation_does_not_hit(cache: SemanticCache) -> None:
    lisbon = [
        ("user", "What's the weather in Lisbon?"),
        ("assistant", "Sunny, 24 °C."),
        ("user", "And tomorrow?"),
    ]
    oslo = [
        ("user", "What's the weather in Oslo?"),
        ("assistant", "Snow, -3 °C."),
        ("user", "And tomorrow?"),
    ]
    cache.store(cache_key(lisbon), SCOPE, answer("Sunny again."))
    assert cache_key(lisbon) != cache_key(oslo)
    assert cache.lookup(cache_key(oslo), SCOPE) is None
    hit = cache.lookup(cache_key(lisbon), SCOPE)
    assert hit is not None
    assert hit.exact
    reworded = [*lisbon[:2], ("user", "And tomorrow, please?")]
    hit = cache.lookup(cache_key(reworded), SCOPE)
    assert hit is not None
    assert not hit.exact
    assert cache.lookup("And tomorrow?", SCOPE) is None  # no context is a context too


def test_the_system_prompt_is_part_of_the_context() -> None:
    terse = [("system", "Answer in one word."), ("user", "Is it safe to run?")]
    chatty = [("system", "Answer at length."), ("user", "Is it safe to run?")]
    assert cache_key(terse) != cache_key(chatty)
    assert cache_key(terse).endswith("] Is it safe to run?")


def test_normalise_and_prompt_hash() -> None:
    assert normalise("  What  is\tmy HEART rate?? ") == "what is my heart rate"
    assert normalise("\uff57\uff48\uff41\uff54") == "what"  # NFKC
    assert prompt_hash("What is my heart rate?") == prompt_hash("what is my heart rate")
    assert re.fullmatch(r"[0-9a-f]{64}", prompt_hash("x"))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Can you tell me what my heart rate is?", "What is my heart rate?", True),
        ("How do I reset my smartwatch?", "How can I reset my smart watches?", True),
        ("Is it safe to run at 30°C?", "Is it safe to run at 40°C?", False),
        ("What is 2.5 km in miles?", "What is 25 km in miles?", False),
        ("Convert 5 km to miles", "Convert 5 miles to km", False),
        ("Is it safe to run outside?", "Is it not safe to run outside?", False),
        ("What are the symptoms of dehydration?", "What are the signs of dehydration?", False),
        ("Is the road to the airport congested?", "Is the road from the airport congested?", False),
        ("Where is my phone?", "Where is your phone?", False),
    ],
)
def test_same_question(a: str, b: str, same: bool) -> None:
    assert same_question(a, b) is same
    assert same_question(b, a) is same


def test_an_empty_scope_answers_without_embedding(cache: SemanticCache, embed: BagOfWords) -> None:
    assert cache.lookup("What is my heart rate?", SCOPE) is None
    assert embed.calls == 0


def test_a_wrong_embedding_shape_is_refused(clock: Clock) -> None:
    dims = iter([8, 16])

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), next(dims)), dtype=np.float32)

    cache = SemanticCache(embed, ttl_s=1, max_entries=1, clock=clock)
    cache.store("a", SCOPE, answer("a"))
    with pytest.raises(ValueError, match="dimension 16, not 8"):
        cache.store("b", SCOPE, answer("b"))
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(embed, threshold=0.0)
    with pytest.raises(ValueError, match="ttl_s"):
        SemanticCache(embed, ttl_s=0)


def test_concurrent_stores_and_lookups(cache: SemanticCache) -> None:
    texts = [f"What is the air quality at sensor {n}?" for n in range(50)]

    def work(n: int) -> None:
        cache.store(texts[n % 50], f"tenant-{n % 3}", answer(str(n)))
        cache.lookup(texts[(n * 7) % 50], f"tenant-{n % 3}")
        if n % 25 == 0:
            cache.sweep()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(400)))
    stats = cache.stats
    assert stats["hits"] + stats["misses"] == 400
    assert stats["entries"] == len(cache) == 150


async def test_async_wrappers(cache: SemanticCache) -> None:
    await cache.astore("What is my heart rate?", SCOPE, answer("72 bpm"))
    hit, miss = await asyncio.gather(
        cache.alookup("Can you tell me what my heart rate is?", SCOPE),
        cache.alookup("What is my blood pressure?", SCOPE),
    )
    assert hit is not None
    assert hit.answer.text == "72 bpm"
    assert miss is None


# -- the real encoder: calibration of DEFAULT_THRESHOLD --------------------------------


@pytest.fixture(scope="module")
def minilm() -> Callable[[Sequence[str]], np.ndarray]:
    """all-MiniLM-L6-v2, with every labelled text embedded once (memoised)."""
    if importlib.util.find_spec("gateway.encoder") is None:
        pytest.skip("gateway.encoder is not in this checkout")
    from gateway.encoder import SentenceEncoder  # noqa: PLC0415 - optional, heavy

    encoder = SentenceEncoder()
    texts = sorted(
        {
            t
            for pairs in (NEAR_DUPLICATES, PARAPHRASES, DIFFERENT, AUXILIARY_ONLY)
            for p in pairs
            for t in p
        }
    )
    memo = dict(zip(texts, encoder.encode(texts), strict=True))

    def embed(batch: Sequence[str]) -> np.ndarray:
        missing = [t for t in batch if t not in memo]
        if missing:
            memo.update(zip(missing, encoder.encode(missing), strict=True))
        return np.array([memo[t] for t in batch], dtype=np.float32)

    return embed


def cosines(
    embed: Callable[[Sequence[str]], np.ndarray], pairs: list[tuple[str, str]]
) -> np.ndarray:
    a = embed([p[0] for p in pairs])
    b = embed([p[1] for p in pairs])
    return (a * b).sum(axis=1)  # type: ignore[no-any-return]


def pair_hits(
    embed: Callable[[Sequence[str]], np.ndarray], pairs: list[tuple[str, str]]
) -> list[bool]:
    """Whether the second of each pair is answered by the first, each pair in its own cache."""
    out = []
    for first, second in pairs:
        cache = SemanticCache(embed, ttl_s=60, max_entries=10)
        cache.store(first, SCOPE, answer(first))
        hit = cache.lookup(second, SCOPE)
        out.append(hit is not None and hit.answer.text == first)
    return out


def test_threshold_calibration(minilm: Callable[[Sequence[str]], np.ndarray]) -> None:
    near, para, diff, aux = (
        cosines(minilm, p) for p in (NEAR_DUPLICATES, PARAPHRASES, DIFFERENT, AUXILIARY_ONLY)
    )
    reach = int((diff >= DEFAULT_THRESHOLD).sum())
    print(
        f"\ncosine: near-duplicates {near.min():.3f}..{near.max():.3f}, "
        f"paraphrases {para.min():.3f}..{para.max():.3f}, "
        f"different {diff.min():.3f}..{diff.max():.3f}, "
        f"auxiliary-only {aux.min():.3f}..{aux.max():.3f}; threshold {DEFAULT_THRESHOLD}: "
        f"{near.min() - DEFAULT_THRESHOLD:.3f} below the lowest near-duplicate; "
        f"{reach}/{len(diff)} different pairs reach it and are refused by verification"
    )
    assert near.min() - DEFAULT_THRESHOLD >= 0.03  # room for wording noise
    assert diff.max() > near.min()  # why the threshold alone cannot do it: verification is needed
    assert not any(same_question(a, b) for a, b in DIFFERENT)


def test_near_duplicates_hit_and_different_questions_do_not(
    minilm: Callable[[Sequence[str]], np.ndarray],
) -> None:
    near = pair_hits(minilm, NEAR_DUPLICATES)
    para = pair_hits(minilm, PARAPHRASES)
    diff = pair_hits(minilm, DIFFERENT)
    print(
        f"\nhits: near-duplicates {sum(near)}/{len(near)}, "
        f"paraphrases {sum(para)}/{len(para)}, different {sum(diff)}/{len(diff)}"
    )
    assert [p for p, h in zip(NEAR_DUPLICATES, near, strict=True) if not h] == []
    assert [p for p, h in zip(DIFFERENT, diff, strict=True) if h] == []
    assert sum(para) >= 2


def test_one_shared_scope_gives_no_wrong_answers(
    minilm: Callable[[Sequence[str]], np.ndarray],
) -> None:
    """Every labelled first question in one cache: each second question gets its partner's
    answer (or an identical question's), or nothing; never another question's."""
    cache = SemanticCache(minilm, ttl_s=60, max_entries=1000)
    firsts = {p[0] for pairs in (NEAR_DUPLICATES, PARAPHRASES, DIFFERENT) for p in pairs}
    for text in firsts:
        cache.store(text, SCOPE, answer(text))
    for pairs, must_hit in ((NEAR_DUPLICATES, True), (PARAPHRASES, False), (DIFFERENT, False)):
        for first, second in pairs:
            hit = cache.lookup(second, SCOPE)
            same = {normalise(second)} | ({normalise(first)} if pairs is not DIFFERENT else set())
            allowed = {t for t in firsts if normalise(t) in same}
            assert hit is None or hit.answer.text in allowed, (second, hit)
            assert hit is not None or not must_hit, second


@pytest.mark.xfail(strict=True, reason="known limit: differences only in auxiliaries pass")
def test_auxiliary_only_differences_do_not_hit(
    minilm: Callable[[Sequence[str]], np.ndarray],
) -> None:
    assert not any(pair_hits(minilm, AUXILIARY_ONLY))
