"""Node configuration and the model registry: clear errors for bad input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_node.config import ConfigError, load_config
from edge_node.errors import ModelError
from edge_node.models import KNOWN_MODELS, resolve_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("node-*.yaml")))
def test_example_configs_are_valid(name):
    config = load_config(CONFIGS / name, env={})
    assert config.node_id


def test_environment_overrides_nested_fields(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text("node_id: a\nengine: {type: simulated, profile: raspberry-pi-5}\n")
    env = {
        "EDGECOLLAB_NODE__BUS__PORT": "1999",
        "EDGECOLLAB_NODE__NODE_ID": "pi-kitchen",
        "EDGECOLLAB_NODE__LIMITS__MAX_TOKENS": "64",
        "OTHER": "ignored",
    }
    config = load_config(path, env=env)
    assert config.bus.port == 1999
    assert config.node_id == "pi-kitchen"
    assert config.limits.max_tokens == 64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("node_id: a\nengine: {type: simulated, profile: raspberry-pi-5}\nturbo: true\n", "turbo"),
        ("node_id: A/B\nengine: {type: simulated, profile: raspberry-pi-5}\n", "node_id"),
        ("node_id: a\nengine: {type: tensorrt}\n", "engine"),
        ("node_id: a\nengine: {type: simulated, profile: pentium-3}\n", "pentium-3"),
        ("node_id: a\n", "engine"),
        ("- just\n- a list\n", "mapping"),
        ("node_id: [unclosed\n", "cannot read"),
        ("node_id: a\nengine: {type: llama_cpp, n_ctx: 10}\n", "n_ctx"),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, text, problem):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_config(path, env={})


def test_known_model_resolves_and_verifies():
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolved.known is KNOWN_MODELS["smollm2-135m-instruct"]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        resolve_model("gpt-5-nano")


def test_corrupt_model_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 1000)
    right = hashlib.sha256(fake.read_bytes()).hexdigest()
    assert resolve_model(str(fake), sha256=right, cache_dir=tmp_path).path == fake
    before = fake.stat().st_mtime_ns
    fake.write_bytes(b"GGUF" + b"\x01" * 1000)  # the file changed after it was verified
    os.utime(fake, ns=(before + 10**9, before + 10**9))
    with pytest.raises(ModelError, match="corrupt"):
        resolve_model(str(fake), sha256=right, cache_dir=tmp_path)


def test_not_a_gguf_file_is_refused(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_text("<html>404</html>")
    with pytest.raises(ModelError, match="not a GGUF"):
        resolve_model(str(bogus))


def test_node_command_fails_clearly_on_a_missing_model(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(f"node_id: a\nengine: {{type: llama_cpp, model: {tmp_path}/none.gguf}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "edgecollab.cli", "node", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "neither a known model" in done.stderr


def test_example_gateway_config_is_valid():
    from gateway.config import load_gateway_config  # noqa: PLC0415 - gateway extra

    config = load_gateway_config(CONFIGS / "gateway.yaml", env={})
    assert config.policy == "fit_first"
    assert config.cloud.api_key_env == "OPENAI_API_KEY"


def test_gateway_config_validates_the_policy_and_its_options():
    from gateway.config import GatewayConfigError, load_gateway_config  # noqa: PLC0415

    env = {
        "EDGECOLLAB_GATEWAY__POLICY": "cost_aware",
        "EDGECOLLAB_GATEWAY__POLICY_OPTIONS__TARGET_S": "8",
    }
    config = load_gateway_config(CONFIGS / "gateway.yaml", env=env)
    assert config.policy_options == {"target_s": 8.0}
    for bad, message in (
        ({"EDGECOLLAB_GATEWAY__POLICY": "round_robin"}, "known policies"),
        ({**env, "EDGECOLLAB_GATEWAY__POLICY_OPTIONS__SLO": "8"}, "no option slo"),
        ({**env, "EDGECOLLAB_GATEWAY__POLICY_OPTIONS__TARGET_S": "0"}, "target_s must be > 0"),
    ):
        with pytest.raises(GatewayConfigError, match=message):
            load_gateway_config(CONFIGS / "gateway.yaml", env=bad)
