"""A local stand-in for the cloud: llama-cpp-python's own OpenAI-compatible server.

Used by the demo and the tests so that cloud escalation goes through a real HTTP
server speaking the OpenAI API, on SmolLM2, without an internet connection.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx

from broker.launcher import free_port
from edge_node.models import resolve_model

CLOUD_MODEL = "cloud-smollm2"


@contextlib.contextmanager
def running_cloud_server() -> Iterator[str]:
    port = free_port()
    model = resolve_model("smollm2-135m-instruct").path
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                CLOUD_MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_threads",
                "2",
                "--n_ctx",
                "2048",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"cloud stand-in died: {log.read()[-2000:]!r}")
                try:
                    if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("cloud stand-in did not start within 60 s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
