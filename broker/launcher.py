"""Start and stop a real Mosquitto broker with the project's config (demo, tests, tools).

Usage::

    with MosquittoBroker() as broker:      # a free port and a temp data dir
        connect(broker.host, broker.port)

:meth:`MosquittoBroker.stop` keeps the data dir so that :meth:`~MosquittoBroker.start`
or :meth:`~MosquittoBroker.restart` can follow on the same port with the persisted
retained messages; :meth:`~MosquittoBroker.close` (and leaving the ``with`` block) also
deletes a data dir the broker created itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from broker.errors import BrokerLaunchError
from broker.mosquitto_config import read_template, render_config

logger = logging.getLogger(__name__)

INSTALL_HINT: Final = (
    "install it with `sudo apt-get install -y mosquitto` or `bash scripts/setup.sh`"
)
_SBIN_PATHS: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_PORT_ATTEMPTS: Final = 5
_LOG_TAIL_LINES: Final = 25


def find_mosquitto(binary: str | None = None) -> str:
    """Path of the Mosquitto executable: ``binary`` if given, else PATH, then the sbin dirs."""
    if binary is not None:
        found = shutil.which(binary)
        if found is None:
            raise BrokerLaunchError(f"Mosquitto binary {binary!r} not found; {INSTALL_HINT}")
        return found
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    for candidate in _SBIN_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerLaunchError(
        f"Mosquitto is not installed (no `mosquitto` on PATH, in /usr/sbin or /usr/local/sbin); "
        f"{INSTALL_HINT}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (another process may take it before you do)."""
    family, address = _address(host, 0)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(address)
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound the way Mosquitto binds it (with SO_REUSEADDR).

    Checked before launching because the readiness probe is a TCP connect: a port
    held by another server (say the system broker on 1883) would look ready.
    """
    family, address = _address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
        return True


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BrokerLaunchError(f"cannot resolve broker host {host!r}: {exc}") from exc
    family, _type, _proto, _name, address = infos[0]
    return family, address


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Last-resort cleanup when a broker is garbage collected or the interpreter exits."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class MosquittoBroker:
    """One Mosquitto process with a rendered config; reusable (start/stop/restart/kill)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Path | None = None,
        data_dir: Path | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        """``port`` 0 picks a free port at the first start; ``data_dir`` ``None`` uses a
        temp dir owned (and deleted by :meth:`close`) by this broker; ``config`` ``None``
        uses the project's template."""
        self._host = host
        self._port = port
        self._auto_port = port == 0
        self._config = config
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: weakref.finalize[[subprocess.Popen[bytes]], MosquittoBroker] | None = None
        self._dir_cleanup: weakref.finalize[..., MosquittoBroker] | None = None
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="edgecollab-mosquitto-"))
            self._dir_cleanup = weakref.finalize(self, shutil.rmtree, data_dir, ignore_errors=True)
        self._data_dir = data_dir

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The listening port; 0 before the first start when a free port was requested."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"mqtt://{host}:{self._port}"

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything Mosquitto logged in this data dir (all starts), or ``""``."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start Mosquitto and wait until it accepts TCP connections; no-op when running."""
        if self.running:
            return
        self._forget_process()  # one that exited by itself
        binary = find_mosquitto(self._binary)
        template = read_template(self._config)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = _PORT_ATTEMPTS if self._auto_port and self._port == 0 else 1
        for attempt in range(1, attempts + 1):
            port = self._port or free_port(self._host)
            if _port_is_free(self._host, port):
                error = self._launch(binary, template, port)
            else:
                error = f"{self._host}:{port} is already in use (another broker?)"
            if error is None:
                self._port = port
                logger.info(
                    "Mosquitto started at %s (pid %s, data %s)", self.url, self.pid, self._data_dir
                )
                return
            if attempt < attempts and "already in use" in error:
                logger.info("port %d was taken before Mosquitto bound it; retrying", port)
                continue
            raise BrokerLaunchError(error)

    def _launch(self, binary: str, template: str, port: int) -> str | None:
        """Run one Mosquitto process on ``port``; ``None`` when ready, else the error text."""
        conf = self._data_dir / "mosquitto.conf"
        conf.write_text(
            render_config(template, host=self._host, port=port, data_dir=self._data_dir),
            encoding="utf-8",
        )
        with self.log_path.open("ab") as log:
            offset = log.tell()
            # Own session: a Ctrl-C in the terminal reaches the agents, not the broker,
            # which the owner stops last.
            proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        self._reaper = weakref.finalize(self, _reap, proc)
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if proc.poll() is not None:
                self._forget_process()
                return (
                    f"Mosquitto ({binary}) exited with code {proc.returncode} while starting "
                    f"on {self._host}:{port}; config {conf}; log:\n{self._log_tail(offset)}"
                )
            if self._accepts(port) and proc.poll() is None:
                return None
            if time.monotonic() > deadline:
                self.kill()
                return (
                    f"Mosquitto did not accept connections on {self._host}:{port} within "
                    f"{self._startup_timeout:g} s; log:\n{self._log_tail(offset)}"
                )
            time.sleep(0.02)

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self._host, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_tail(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:]) or "(empty log)"

    def _forget_process(self) -> None:
        self._proc = None
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its database), wait, SIGKILL as a last resort. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "Mosquitto pid %d ignored SIGTERM for %g s; killing", proc.pid, timeout
                )
                proc.kill()
                proc.wait()
        logger.info("Mosquitto at %s stopped (exit code %s)", self.url, proc.returncode)
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL without a database save, as a crash would; for fault tests. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget_process()

    def restart(self) -> None:
        """Stop with SIGTERM, then start on the same port and data dir."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and delete the data dir if this broker created it."""
        self.stop()
        if self._dir_cleanup is not None:
            self._dir_cleanup()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> MosquittoBroker:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)
