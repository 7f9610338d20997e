"""Shared fixtures: real Mosquitto brokers started by the launcher, unique topic prefixes.

- ``mosquitto`` (session): one broker on a free port for the whole run. Do not stop,
  restart or kill it; use ``fresh_broker`` for that.
- ``fresh_broker`` (function): a broker of its own, for restart, kill and fault tests.
- ``prefix`` (function): a unique topic level (``t`` + 8 hex digits) so that tests
  sharing the session broker never see each other's messages or retained entries.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from broker.launcher import MosquittoBroker
from broker.topics import validate_id


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture
def fresh_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture
def prefix() -> str:
    return validate_id(f"t{secrets.token_hex(4)}", "test prefix")


@pytest.fixture(scope="session")
def cloud_url() -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on SmolLM2: the cloud stand-in."""
    from edgecollab.cloud_standin import running_cloud_server  # noqa: PLC0415 - heavy, lazy

    with running_cloud_server() as url:
        yield url


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    """One SmolLM2 llama.cpp engine shared by the tests that run nodes in-process."""
    from edge_node.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine  # noqa: PLC0415

    eng = LlamaCppEngine(LlamaCppConfig(model="smollm2-135m-instruct", n_threads=2))
    yield eng
    eng.close()
