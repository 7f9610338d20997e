"""The Mosquitto launcher, the config template and its rendering, against real brokers."""

from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.codec import MAX_PAYLOAD_BYTES
from broker.errors import BrokerLaunchError
from broker.launcher import MosquittoBroker, free_port
from broker.mosquitto_config import (
    LAUNCHER_KEYS,
    message_size_limit,
    read_template,
    render_config,
    template_path,
)

TIMEOUT = 5.0


class Paho:
    """A connected paho-mqtt 2.x MQTT v5 client with its network loop on a thread."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.disconnected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._connected.wait(TIMEOUT), "no CONNACK"

    def _on_publish(self, _c, _u, mid: int, reason: ReasonCode, _props) -> None:
        self.acks[mid] = reason

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT)
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def paho(broker: MosquittoBroker) -> Iterator[Paho]:
    client = Paho(broker)
    try:
        yield client
    finally:
        client.close()


def test_start_stop_is_idempotent_and_cleans_up() -> None:
    broker = MosquittoBroker()
    assert broker.port == 0
    assert not broker.running
    assert broker.pid is None
    broker.start()
    try:
        assert broker.running
        assert broker.pid is not None
        assert broker.port > 0
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        broker.start()  # no-op while running
        with socket.create_connection((broker.host, broker.port), timeout=TIMEOUT):
            pass
        assert "running" in broker.log_text()
    finally:
        broker.stop()
    assert not broker.running
    assert broker.pid is None
    broker.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((broker.host, broker.port), timeout=TIMEOUT).close()
    data_dir = broker.data_dir
    assert data_dir.is_dir()
    broker.close()
    assert not data_dir.exists()


def test_free_port_is_bindable() -> None:
    port = free_port("127.0.0.1")
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_taken_port_is_refused_not_mistaken_for_ready() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = MosquittoBroker(port=port)
        with pytest.raises(BrokerLaunchError, match="already in use"):
            broker.start()
        broker.close()


async def test_async_context_manager() -> None:
    async with MosquittoBroker() as broker:
        assert broker.running
        data_dir = broker.data_dir
    assert not broker.running
    assert not data_dir.exists()


def test_restart_keeps_retained_message_and_port(
    fresh_broker: MosquittoBroker, prefix: str
) -> None:
    topic = f"slm/{prefix}/birth"
    with paho(fresh_broker) as client:
        assert not client.publish(topic, b"node-1", retain=True).is_failure
    port, pid = fresh_broker.port, fresh_broker.pid
    fresh_broker.restart()
    assert fresh_broker.port == port
    assert fresh_broker.pid != pid
    with paho(fresh_broker) as client:
        client.subscribe(topic)
        msg = client.messages.get(timeout=TIMEOUT)
    assert msg.topic == topic
    assert msg.payload == b"node-1"
    assert msg.retain


def test_kill_then_start_again(fresh_broker: MosquittoBroker) -> None:
    fresh_broker.kill()
    assert not fresh_broker.running
    fresh_broker.kill()  # idempotent
    fresh_broker.start()
    with paho(fresh_broker):
        pass


def test_broken_config_reports_the_log(tmp_path: Path) -> None:
    config = tmp_path / "broken.conf"
    config.write_text("this_option_does_not_exist 1\n")
    broker = MosquittoBroker(config=config, data_dir=tmp_path / "data")
    with pytest.raises(BrokerLaunchError, match="this_option_does_not_exist") as info:
        broker.start()
    assert "exited with code" in str(info.value)
    assert not broker.running
    broker.close()


def test_missing_binary_gives_the_install_hint(tmp_path: Path) -> None:
    broker = MosquittoBroker(binary=str(tmp_path / "no-such-mosquitto"))
    with pytest.raises(BrokerLaunchError, match=r"apt-get install -y mosquitto"):
        broker.start()
    broker.close()


def test_broker_refuses_payload_over_the_limit(mosquitto: MosquittoBroker, prefix: str) -> None:
    topic = f"data/{prefix}/size/a1"
    with paho(mosquitto) as subscriber:
        subscriber.subscribe(topic)
        with paho(mosquitto) as big:
            info = big.client.publish(topic, b"x" * (MAX_PAYLOAD_BYTES + 1), qos=1)
            # The broker refuses it and says so in the PUBACK. Mosquitto's docs promise
            # 0x83 "Implementation specific error"; 2.0.11 sends 0x95 "Packet too large",
            # which MQTT 5 does not allow in a PUBACK, so paho 2.x reports a malformed
            # packet and drops the connection. Either way the refusal has been sent.
            assert _wait_until(lambda: info.mid in big.acks or big.disconnected.is_set())
            if info.mid in big.acks:
                assert big.acks[info.mid].is_failure
        with paho(mosquitto) as small:
            assert not small.publish(topic, b"y" * MAX_PAYLOAD_BYTES).is_failure
        msg = subscriber.messages.get(timeout=TIMEOUT)
        # The oversized message was refused before the accepted one was sent: had it
        # been forwarded, it would have arrived first.
        assert subscriber.messages.empty()
    assert len(msg.payload) == MAX_PAYLOAD_BYTES
    assert msg.payload[:1] == b"y"


def test_template_message_size_limit_equals_codec_limit() -> None:
    assert message_size_limit(read_template()) == MAX_PAYLOAD_BYTES


def test_template_path_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert template_path().name == "mosquitto.conf"
    assert template_path().is_file()
    monkeypatch.setenv("EDGECOLLAB_MOSQUITTO_CONF", str(tmp_path / "x.conf"))
    assert template_path() == tmp_path / "x.conf"
    with pytest.raises(BrokerLaunchError, match="EDGECOLLAB_MOSQUITTO_CONF"):
        read_template()


def test_render_replaces_launcher_keys_and_keeps_extra_listeners(tmp_path: Path) -> None:
    template = (
        "pid_file /run/x.pid\npersistence true\npersistence_location /var/lib/x/\n"
        "log_dest syslog\nuser mosquitto\nport 1883\n# listener 9 commented\n"
        "listener 1883 127.0.0.1\nprotocol mqtt\nbind_address 0.0.0.0\n"
        "listener 8883 0.0.0.0\nbind_address 10.0.0.1\n"
    )
    log = tmp_path / "m.log"
    rendered = render_config(
        template, host="::1", port=4242, data_dir=tmp_path, log_file=log, as_root=False
    )
    lines = rendered.splitlines()
    head = lines[: lines.index("listener 8883 0.0.0.0")]
    owned = [ln for ln in head if ln.split() and ln.split()[0] in LAUNCHER_KEYS]
    assert owned == [
        f"persistence_location {tmp_path}/",
        f"log_dest file {log}",
        "listener 4242 ::1",
    ]
    assert lines.index("listener 4242 ::1") + 1 == lines.index("protocol mqtt")
    assert "# listener 9 commented" in lines
    assert "persistence true" in lines
    assert lines[-2:] == ["listener 8883 0.0.0.0", "bind_address 10.0.0.1"]


def test_render_user_root_and_stderr_log(tmp_path: Path) -> None:
    as_root = render_config("", host="127.0.0.1", port=1, data_dir=tmp_path, as_root=True)
    assert "user root" in as_root.splitlines()
    assert "log_dest stderr" in as_root.splitlines()
    assert as_root.splitlines()[-1] == "listener 1 127.0.0.1"
    plain = render_config("", host="127.0.0.1", port=1, data_dir=tmp_path, as_root=False)
    assert "user root" not in plain


@pytest.mark.parametrize(("host", "port"), [("bad host", 1883), ("127.0.0.1", 0), ("h", 70000)])
def test_render_rejects_bad_listener(tmp_path: Path, host: str, port: int) -> None:
    with pytest.raises(BrokerLaunchError):
        render_config("", host=host, port=port, data_dir=tmp_path)


def test_message_size_limit_reading() -> None:
    assert message_size_limit("# message_size_limit 5\n") is None
    assert message_size_limit("message_size_limit 5\nmessage_size_limit 7\n") == 7
    with pytest.raises(ValueError):
        message_size_limit("message_size_limit lots\n")


def test_start_after_the_process_died_by_itself(fresh_broker: MosquittoBroker) -> None:
    pid = fresh_broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _wait_until(lambda: not fresh_broker.running)
    assert fresh_broker.pid is None
    fresh_broker.start()
    assert fresh_broker.running
    assert fresh_broker.pid != pid
