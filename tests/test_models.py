"""Models that ship in PyPI packages, loaded for real."""

from __future__ import annotations

import threading

from broker import ChatMessage
from edge_node.engines.base import GenerationRequest, Sampling
from edge_node.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine, plain_transcript
from edge_node.models import KNOWN_MODELS, resolve_model


def test_gemma3_is_assembled_once_verified_and_answers(tmp_path):
    resolved = resolve_model("gemma3-270m", cache_dir=tmp_path)
    assert resolved.path.parent == tmp_path
    assert resolved.path.stat().st_size > 200_000_000
    assert resolved.known is KNOWN_MODELS["gemma3-270m"]
    mtime = resolved.path.stat().st_mtime_ns
    assert resolve_model("gemma3-270m", cache_dir=tmp_path).path.stat().st_mtime_ns == mtime

    engine = LlamaCppEngine(LlamaCppConfig(model="gemma3-270m", n_threads=2, cache_dir=tmp_path))
    try:
        assert engine.info.architecture == "gemma3"
        assert engine.info.parameters == "270M"
        assert engine.info.extra["chat_format"] == "plain"  # a base model: no chat template
        gen = engine.generate(
            GenerationRequest(
                (ChatMessage("user", "What is the capital of France?"),),
                24,
                Sampling(0.0, 0.95, 40),
            ),
            lambda _text: None,
            threading.Event(),
        )
    finally:
        engine.close()
    assert "Paris" in gen.text
    assert gen.confidence is not None
    assert 0.0 < gen.confidence <= 1.0


def test_plain_transcript_for_base_models():
    prompt = plain_transcript(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert prompt.prompt == "System: Be brief.\nUser: Hi\nAssistant:"
    assert "\nUser:" in prompt.stop
