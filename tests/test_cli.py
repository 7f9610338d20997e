"""The ``edgecollab`` command, run as a user would: the demo and the cms verbs."""

from __future__ import annotations

import json
import subprocess
import sys

from broker import MosquittoBroker
from broker.launcher import free_port


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecollab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_answers_over_the_bus_and_shows_the_cms():
    done = run("up", timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "user asks smollm2-cpu (stream)" in out
    assert "confidence 0." in out
    assert "answered by sim-orin-nano [simulated]" in out
    assert "refused at once: overloaded: smollm2-cpu: all 1 slots busy" in out
    assert '"code":"bad_request"' in out
    assert "'temperature': 0.0" in out
    assert "smollm2-cpu: online, smollm2-135m-instruct (135M, Q4_1)" in out
    assert "slm/metrics/smollm2-cpu/tokens_used_total" in out
    assert "< edge via smollm2-cpu:" in out
    assert "< cache via smollm2-cpu:" in out
    assert "< cloud, escalation: low confidence:" in out
    assert "strict-clinic: 1 requests, edge 0, cloud 1" in out


def test_cms_set_get_ls_rm(mosquitto: MosquittoBroker, prefix: str):
    port = str(mosquitto.port)
    key = f"slm/tenants/{prefix}/usage_limit"
    assert run("cms", "--port", port, "set", key, '{"tokens": 100000}').returncode == 0
    got = run("cms", "--port", port, "--json", "get", key)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"key": key, "value": {"tokens": 100000}}
    listed = run("cms", "--port", port, "ls", f"slm/tenants/{prefix}")
    assert listed.stdout.strip() == f'{key}  {{"tokens":100000}}'
    assert run("cms", "--port", port, "rm", key).returncode == 0
    missing = run("cms", "--port", port, "get", key)
    assert missing.returncode == 1
    assert "no such entry" in missing.stderr


def test_cms_rejects_bad_keys_and_dead_brokers(mosquitto: MosquittoBroker):
    bad = run("cms", "--port", str(mosquitto.port), "set", "slm/a/#", "1")
    assert bad.returncode == 2
    assert "must not contain '#'" in bad.stderr
    dead = run("cms", "--port", str(free_port()), "ls", timeout=30)
    assert dead.returncode == 2
    assert "cannot connect" in dead.stderr or "no connection" in dead.stderr
