"""The topic namespace of DESIGN.md: builders, parser, id and CMS key validation."""

from __future__ import annotations

from typing import Any

import pytest

from broker import topics
from broker.errors import BusError, TopicError
from broker.topics import (
    ParsedTopic,
    capability_request_topic,
    capability_shared_filter,
    cms_key,
    data_filter,
    data_topic,
    knowledge_query_topic,
    node_key,
    node_request_topic,
    parse_topic,
    reply_filter,
    reply_topic,
    validate_cms_key,
    validate_cms_level,
    validate_cms_prefix,
    validate_id,
)

# --- builders give the DESIGN.md topics


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (
            data_topic("health", "processed_embeddings", "watch-01"),
            "data/health/processed_embeddings/watch-01",
        ),
        (data_filter(), "data/+/+/+"),
        (data_filter("traffic"), "data/traffic/+/+"),
        (data_filter(stream="video_emb"), "data/+/video_emb/+"),
        (data_filter("traffic", "video_emb"), "data/traffic/video_emb/+"),
        (capability_request_topic("chat"), "computation/chat/request"),
        (capability_request_topic("summarize_v2"), "computation/summarize_v2/request"),
        (capability_shared_filter("chat"), "$share/chat/computation/chat/request"),
        (node_request_topic("jetson-orin-1"), "computation/node/jetson-orin-1/request"),
        (knowledge_query_topic("arithmetic"), "knowledge/arithmetic/query"),
        (reply_topic("gateway-1"), "reply/gateway-1"),
        (reply_topic("gateway-1", "c0ffee", "7"), "reply/gateway-1/c0ffee/7"),
        (reply_filter("gateway-1"), "reply/gateway-1/#"),
        (
            cms_key("models", "smollm2-135m", "context_length"),
            "slm/models/smollm2-135m/context_length",
        ),
        (cms_key("configs", "fallback_endpoint"), "slm/configs/fallback_endpoint"),
        (cms_key("configs", "node-1", "version"), "slm/configs/node-1/version"),
        (cms_key("cache", "ab12cd.v1.2"), "slm/cache/ab12cd.v1.2"),
        (node_key("rpi5-a", "birth"), "slm/nodes/rpi5-a/birth"),
        (node_key("rpi5-a", "state"), "slm/nodes/rpi5-a/state"),
        (node_key("rpi5-a", "load"), "slm/nodes/rpi5-a/load"),
    ],
)
def test_builder_gives_design_topic(built: str, expected: str) -> None:
    assert built == expected


def test_shared_filter_wraps_the_capability_request_topic() -> None:
    for cap in ("chat", "vision_qa", "x-1"):
        assert capability_shared_filter(cap) == f"$share/{cap}/{capability_request_topic(cap)}"


def test_roots_match_design() -> None:
    assert (
        topics.DATA_ROOT,
        topics.COMPUTATION_ROOT,
        topics.KNOWLEDGE_ROOT,
        topics.REPLY_ROOT,
        topics.CMS_ROOT,
    ) == ("data", "computation", "knowledge", "reply", "slm")


# --- parse_topic round-trips


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (
            data_topic("health", "hr", "watch-01"),
            ParsedTopic("data", {"domain": "health", "stream": "hr", "agent_id": "watch-01"}),
        ),
        (
            capability_request_topic("chat"),
            ParsedTopic("capability_request", {"capability": "chat"}),
        ),
        (node_request_topic("jetson-1"), ParsedTopic("node_request", {"node_id": "jetson-1"})),
        (
            knowledge_query_topic("arithmetic"),
            ParsedTopic("knowledge_query", {"domain": "arithmetic"}),
        ),
        (reply_topic("gw"), ParsedTopic("reply", {"client_id": "gw", "rest": ""})),
        (
            reply_topic("gw", "abc", "chunk_3"),
            ParsedTopic("reply", {"client_id": "gw", "rest": "abc/chunk_3"}),
        ),
        (
            cms_key("configs", "node-1", "v1.2"),
            ParsedTopic("cms", {"key": "slm/configs/node-1/v1.2"}),
        ),
        (node_key("n1", "state"), ParsedTopic("cms", {"key": "slm/nodes/n1/state"})),
    ],
)
def test_parse_topic_round_trips(topic: str, expected: ParsedTopic) -> None:
    assert parse_topic(topic) == expected


def test_parse_data_topic_rebuilds_the_same_topic() -> None:
    topic = data_topic("traffic", "video_emb", "cam-7")
    levels = parse_topic(topic).levels
    assert data_topic(levels["domain"], levels["stream"], levels["agent_id"]) == topic


def test_parse_node_request_is_not_mistaken_for_a_capability() -> None:
    parsed = parse_topic("computation/node/n1/request")
    assert parsed.kind == "node_request"
    assert parsed.levels == {"node_id": "n1"}


def test_parsed_topic_is_frozen() -> None:
    parsed = parse_topic("knowledge/math/query")
    with pytest.raises(AttributeError):
        parsed.kind = "data"  # type: ignore[misc]


@pytest.mark.parametrize(
    "topic",
    [
        "foo/bar",
        "foo",
        "data/a/b",
        "data/a/b/c/d",
        "data",
        "computation/x/y",
        "computation/x",
        "computation/node/x/reply",
        "computation/node/x/y/request",
        "knowledge/math/answer",
        "knowledge/math",
        "reply",
        "slm",
        "$share/chat/computation/chat/request",
        "Data/a/b/c",
        "data/A/b/c",
        "data/a b/c/d",
        "data/+/b/c",
        "data/a/b/#",
        "computation/+/request",
        "reply/#",
        "slm/nodes/+/state",
        "slm/Nodes/n1/state",
        "data//b/c",
        "/data/a/b/c",
        "data/a/b/c/",
        "",
        "reply/gw/" + "/".join(["abcdefgh"] * 60),
    ],
)
def test_parse_topic_rejects_topics_outside_the_namespace(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_parse_topic_names_the_problem() -> None:
    with pytest.raises(TopicError, match="not part of the edgecollab namespace"):
        parse_topic("foo/bar")
    with pytest.raises(TopicError, match="empty level"):
        parse_topic("data//b/c")
    with pytest.raises(TopicError, match="longer than 512"):
        parse_topic("reply/" + "a" * 600)
    with pytest.raises(TopicError, match="must not contain '\\+'"):
        parse_topic("data/+/b/c")


@pytest.mark.parametrize("value", [None, 5, b"topic", ["data"]])
def test_parse_topic_rejects_non_strings(value: Any) -> None:
    with pytest.raises(TopicError, match="non-empty string"):
        parse_topic(value)


# --- ids

BAD_IDS: list[tuple[Any, str]] = [
    ("a+b", "must not contain '\\+'"),
    ("+", "must not contain '\\+'"),
    ("a#", "must not contain '#'"),
    ("a/b", "must not contain '/'"),
    ("", "must not be empty"),
    ("Node1", "lowercase"),
    ("NODE", "lowercase"),
    ("has space", "lowercase"),
    ("tab\t", "lowercase"),
    ("dot.ted", "lowercase"),
    ("ünïcode", "lowercase"),
    ("a" * 65, "1-64 characters"),
    (5, "must be a string, got int"),
    (None, "must be a string, got NoneType"),
    (b"node", "must be a string, got bytes"),
]

BUILDERS = [
    ("domain", lambda v: data_topic(v, "s", "a")),
    ("stream", lambda v: data_topic("d", v, "a")),
    ("agent id", lambda v: data_topic("d", "s", v)),
    ("capability", capability_request_topic),
    ("capability", capability_shared_filter),
    ("node id", node_request_topic),
    ("domain", knowledge_query_topic),
    ("client id", reply_topic),
    ("reply level", lambda v: reply_topic("gw", "ok", v)),
    ("client id", reply_filter),
    ("node id", lambda v: node_key(v, "birth")),
]


@pytest.mark.parametrize(("value", "problem"), BAD_IDS)
def test_validate_id_rejects_and_names_the_problem(value: Any, problem: str) -> None:
    with pytest.raises(TopicError, match=problem) as info:
        validate_id(value, "agent id")
    assert "agent id" in str(info.value)


# In data_filter, None means "any" (a '+' level), so it is tested without None.
FILTER_BUILDERS = [
    ("domain", data_filter),
    ("stream", lambda v: data_filter(None, v)),
]


@pytest.mark.parametrize(("value", "problem"), BAD_IDS)
@pytest.mark.parametrize(("what", "build"), BUILDERS)
def test_every_builder_rejects_bad_ids(what: str, build: Any, value: Any, problem: str) -> None:
    with pytest.raises(TopicError, match=problem) as info:
        build(value)
    assert what in str(info.value)


@pytest.mark.parametrize(("value", "problem"), [b for b in BAD_IDS if b[0] is not None])
@pytest.mark.parametrize(("what", "build"), FILTER_BUILDERS)
def test_data_filter_rejects_bad_ids(what: str, build: Any, value: Any, problem: str) -> None:
    with pytest.raises(TopicError, match=problem) as info:
        build(value)
    assert what in str(info.value)


@pytest.mark.parametrize("value", ["a", "0", "node-1", "edge_node_2", "a" * 64, "-_-", "9z"])
def test_validate_id_accepts_valid_levels(value: str) -> None:
    assert validate_id(value) == value


def test_topic_error_is_a_bus_error_and_a_value_error() -> None:
    assert issubclass(TopicError, BusError)
    assert issubclass(TopicError, ValueError)
    with pytest.raises(ValueError):
        validate_id("A")
    with pytest.raises(BusError):
        parse_topic("foo/bar")


# --- CMS keys


@pytest.mark.parametrize(
    "key",
    [
        "slm/configs/node-1/v1.2",
        "slm/cache/3f2a.9c",
        "slm/models/smollm2.q4_k_m/quantization",
        "slm/x",
        "slm/" + "a" * 128,
    ],
)
def test_validate_cms_key_accepts_dotted_levels(key: str) -> None:
    assert validate_cms_key(key) == key


def test_cms_key_accepts_dotted_levels() -> None:
    assert cms_key("configs", "n1", "v1.2") == "slm/configs/n1/v1.2"
    assert validate_cms_level("1.0.3-rc_1") == "1.0.3-rc_1"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("slm/+/state", "must not contain '\\+'"),
        ("slm/nodes/#", "must not contain '#'"),
        ("slm//state", "empty level"),
        ("slm/nodes/", "empty level"),
        ("slm", "must start with 'slm/'"),
        ("foo/nodes/n1", "must start with 'slm/'"),
        ("data/a/b/c", "must start with 'slm/'"),
        ("SLM/nodes", "must start with 'slm/'"),
        ("slm/Nodes", "lowercase"),
        ("slm/a b", "lowercase"),
        ("slm/" + "a" * 129, "lowercase"),
        ("", "non-empty string"),
    ],
)
def test_validate_cms_key_rejects(key: str, problem: str) -> None:
    with pytest.raises(TopicError, match=problem):
        validate_cms_key(key)


@pytest.mark.parametrize(
    ("levels", "problem"),
    [
        ((), "at least one level"),
        (("nodes", "+"), "must not contain '\\+'"),
        (("nodes", "#"), "must not contain '#'"),
        (("a/b",), "must not contain '/'"),
        (("",), "non-empty string"),
        (("nodes", 5), "non-empty string"),
        (("Nodes",), "lowercase"),
    ],
)
def test_cms_key_rejects(levels: tuple[Any, ...], problem: str) -> None:
    with pytest.raises(TopicError, match=problem):
        cms_key(*levels)


def test_node_key_refuses_dots_in_node_id() -> None:
    # Node ids are ordinary ids: dots are only for CMS value levels such as versions.
    with pytest.raises(TopicError, match="node id"):
        node_key("n.1", "state")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("slm", "slm"),
        ("slm/", "slm"),
        ("slm/nodes", "slm/nodes"),
        ("slm/nodes/", "slm/nodes"),
        ("slm/configs/v1.2", "slm/configs/v1.2"),
    ],
)
def test_validate_cms_prefix_accepts(prefix: str, expected: str) -> None:
    assert validate_cms_prefix(prefix) == expected


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("foo", "must start with 'slm'"),
        ("slmx", "must start with 'slm'"),
        ("data/x", "must start with 'slm'"),
        ("slm/+", "must not contain '\\+'"),
        ("slm/#", "must not contain '#'"),
        ("slm//nodes", "empty level"),
        ("", "non-empty string"),
        ("/", "non-empty string"),
        ("slm/Nodes", "lowercase"),
    ],
)
def test_validate_cms_prefix_rejects(prefix: str, problem: str) -> None:
    with pytest.raises(TopicError, match=problem):
        validate_cms_prefix(prefix)


def test_validate_cms_prefix_rejects_non_strings_with_topic_error() -> None:
    with pytest.raises(TopicError):
        validate_cms_prefix(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 5])
def test_validate_cms_key_rejects_non_strings(value: Any) -> None:
    with pytest.raises(TopicError):
        validate_cms_key(value)
