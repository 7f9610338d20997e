"""The topic namespace of DESIGN.md: validated ids, builders and parsers.

Levels are lowercase ``[a-z0-9_-]``. An id never contains ``+``, ``#`` or ``/``;
such ids break ACL patterns, so they are refused here, at configuration time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from broker.errors import TopicError

_LEVEL = re.compile(r"[a-z0-9_-]{1,64}")
_CMS_KEY_LEVEL = re.compile(r"[a-z0-9_.-]{1,128}")
MAX_TOPIC_LENGTH = 512

DATA_ROOT = "data"
COMPUTATION_ROOT = "computation"
KNOWLEDGE_ROOT = "knowledge"
REPLY_ROOT = "reply"
CMS_ROOT = "slm"

TopicKind = Literal["data", "capability_request", "node_request", "knowledge_query", "reply", "cms"]


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid topic level, else raise :class:`TopicError`."""
    if not isinstance(value, str):
        raise TopicError(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise TopicError(f"{what} must not be empty")
    for bad in ("+", "#", "/"):
        if bad in value:
            raise TopicError(f"{what} {value!r} must not contain {bad!r}")
    if not _LEVEL.fullmatch(value):
        raise TopicError(
            f"{what} {value!r} must be 1-64 characters of lowercase a-z, 0-9, '_' or '-'"
        )
    return value


def data_topic(domain: str, stream: str, agent_id: str) -> str:
    """``data/{domain}/{stream}/{agent_id}``: embeddings and metadata from an agent."""
    return "/".join(
        (
            DATA_ROOT,
            validate_id(domain, "domain"),
            validate_id(stream, "stream"),
            validate_id(agent_id, "agent id"),
        )
    )


def data_filter(domain: str | None = None, stream: str | None = None) -> str:
    """Subscription filter over ``data/``; ``None`` levels become ``+``."""
    d = "+" if domain is None else validate_id(domain, "domain")
    s = "+" if stream is None else validate_id(stream, "stream")
    return f"{DATA_ROOT}/{d}/{s}/+"


def capability_request_topic(capability: str) -> str:
    """``computation/{capability}/request``: pulled by nodes serving ``capability``."""
    return f"{COMPUTATION_ROOT}/{validate_id(capability, 'capability')}/request"


def capability_shared_filter(capability: str) -> str:
    """The shared subscription through which nodes balance a capability's requests."""
    cap = validate_id(capability, "capability")
    return f"$share/{cap}/{capability_request_topic(cap)}"


def node_request_topic(node_id: str) -> str:
    """``computation/node/{node_id}/request``: a request directed to one node."""
    return f"{COMPUTATION_ROOT}/node/{validate_id(node_id, 'node id')}/request"


def knowledge_query_topic(domain: str) -> str:
    """``knowledge/{domain}/query``: a question for peers with expertise in ``domain``."""
    return f"{KNOWLEDGE_ROOT}/{validate_id(domain, 'domain')}/query"


def knowledge_shared_filter(domain: str) -> str:
    """The shared subscription through which one expert in ``domain`` takes each query."""
    return f"$share/{KNOWLEDGE_ROOT}/{knowledge_query_topic(domain)}"


def reply_topic(client_id: str, *rest: str) -> str:
    """``reply/{client_id}/...``: where answers to ``client_id`` go."""
    parts = [REPLY_ROOT, validate_id(client_id, "client id")]
    parts.extend(validate_id(p, "reply level") for p in rest)
    return "/".join(parts)


def reply_filter(client_id: str) -> str:
    """Everything addressed to ``client_id``."""
    return f"{REPLY_ROOT}/{validate_id(client_id, 'client id')}/#"


def cms_key(*levels: str) -> str:
    """Build a CMS key ``slm/...``; levels may contain dots (``v1.2``) but no wildcards."""
    if not levels:
        raise TopicError("a CMS key needs at least one level below slm/")
    return "/".join((CMS_ROOT, *(validate_cms_level(level) for level in levels)))


def validate_cms_level(value: str) -> str:
    """Like :func:`validate_id` but also admits '.', as CMS keys hold versions and hashes."""
    if not isinstance(value, str) or value == "":
        raise TopicError("a CMS key level must be a non-empty string")
    for bad in ("+", "#", "/"):
        if bad in value:
            raise TopicError(f"CMS key level {value!r} must not contain {bad!r}")
    if not _CMS_KEY_LEVEL.fullmatch(value):
        raise TopicError(f"CMS key level {value!r} must be lowercase a-z, 0-9, '_', '-' or '.'")
    return value


def validate_cms_key(key: str) -> str:
    """Return ``key`` if it is a concrete key under ``slm/``, else raise."""
    levels = _split(key)
    if levels[0] != CMS_ROOT or len(levels) < 2:
        raise TopicError(f"CMS key {key!r} must start with 'slm/' and name an entry")
    for level in levels[1:]:
        validate_cms_level(level)
    return key


def validate_cms_prefix(prefix: str) -> str:
    """A prefix of CMS keys (``slm``, ``slm/nodes``...); a trailing '/' is dropped."""
    if not isinstance(prefix, str):
        raise TopicError(f"a CMS prefix must be a string, got {type(prefix).__name__}")
    prefix = prefix.rstrip("/")
    levels = _split(prefix)
    if levels[0] != CMS_ROOT:
        raise TopicError(f"CMS prefix {prefix!r} must start with 'slm'")
    for level in levels[1:]:
        validate_cms_level(level)
    return prefix


def node_key(node_id: str, entry: Literal["birth", "state", "load"]) -> str:
    """``slm/nodes/{node_id}/{birth|state|load}``."""
    return cms_key("nodes", validate_id(node_id, "node id"), entry)


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """What a concrete topic means: its kind and its named levels."""

    kind: TopicKind
    levels: dict[str, str]


def parse_topic(topic: str) -> ParsedTopic:
    """Classify a concrete topic of the namespace, or raise :class:`TopicError`."""
    levels = _split(topic)
    root, n = levels[0], len(levels)
    if root == DATA_ROOT and n == 4:
        _validate_all(levels[1:])
        return ParsedTopic(
            "data", {"domain": levels[1], "stream": levels[2], "agent_id": levels[3]}
        )
    if root == COMPUTATION_ROOT and n == 4 and levels[1] == "node" and levels[3] == "request":
        validate_id(levels[2], "node id")
        return ParsedTopic("node_request", {"node_id": levels[2]})
    if root == COMPUTATION_ROOT and n == 3 and levels[2] == "request":
        validate_id(levels[1], "capability")
        return ParsedTopic("capability_request", {"capability": levels[1]})
    if root == KNOWLEDGE_ROOT and n == 3 and levels[2] == "query":
        validate_id(levels[1], "domain")
        return ParsedTopic("knowledge_query", {"domain": levels[1]})
    if root == REPLY_ROOT and n >= 2:
        _validate_all(levels[1:])
        return ParsedTopic("reply", {"client_id": levels[1], "rest": "/".join(levels[2:])})
    if root == CMS_ROOT and n >= 2:
        validate_cms_key(topic)
        return ParsedTopic("cms", {"key": topic})
    raise TopicError(f"topic {topic!r} is not part of the edgecollab namespace")


def _split(topic: str) -> list[str]:
    if not isinstance(topic, str) or topic == "":
        raise TopicError("a topic must be a non-empty string")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise TopicError(f"topic is longer than {MAX_TOPIC_LENGTH} characters")
    levels = topic.split("/")
    if any(level == "" for level in levels):
        raise TopicError(f"topic {topic!r} has an empty level")
    return levels


def _validate_all(levels: list[str]) -> None:
    for level in levels:
        validate_id(level, "topic level")
