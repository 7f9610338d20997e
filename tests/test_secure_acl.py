"""The secure profile against a real Mosquitto: TLS, passwords, ACL per role, tenants."""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.acl_cases import PUB_CASES, SUB_CASES, agent_settings, make_profile, run_cases
from broker import BusClient, Cms, MosquittoBroker, NotConnected
from broker.secure import GeneratedProfile, generate
from broker.secure.credentials import CertificateAuthority, verify_password
from broker.secure.manifest import ManifestError, load_manifest
from broker.transport import PublishRefused


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> GeneratedProfile:
    return make_profile(tmp_path_factory.mktemp("secure"))


@pytest.fixture(scope="module")
def secure_broker(profile: GeneratedProfile) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(config=profile.conf) as broker:
        yield broker


def test_generated_files(profile: GeneratedProfile) -> None:
    for path in [profile.passwd, profile.out / "ca.key", *profile.agent_files.values()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    key = profile.agent_files["node-1"].parent / "client.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    passwd = profile.passwd.read_text()
    bus = agent_settings(profile, "node-1", 1)
    assert bus.password is not None
    secret = bus.password.get_secret_value()
    assert secret not in passwd  # only hashes
    line = next(x for x in passwd.splitlines() if x.startswith("node-1:"))
    assert verify_password(secret, line.split(":", 1)[1])
    acl = profile.acl.read_text()
    assert "pattern readwrite reply/%c/#" in acl
    assert "topic readwrite slm/nodes/node-1/#" in acl
    assert (profile.out / ".gitignore").read_text().strip().endswith("*")
    conf = profile.conf.read_text()
    assert "allow_anonymous false" in conf
    assert "allow_anonymous true" not in conf
    assert "require_certificate true" in conf


def test_regenerating_keeps_passwords_and_ca(profile: GeneratedProfile, tmp_path: Path) -> None:
    out = tmp_path / "again"
    first = make_profile(out)
    before = first.agent_files["ops"].read_text()
    ca = (out / "ca.crt").read_bytes()
    second = make_profile(out)
    assert second.agent_files["ops"].read_text() == before
    assert (out / "ca.crt").read_bytes() == ca


def test_manifest_rejects_bad_ids(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    for text in (
        "agents: [{id: 'node/1', role: node}]",
        "agents: [{id: 'node+1', role: node}]",
        "agents: [{id: Node, role: node}]",
        "agents: [{id: n, role: node, tenant: a}]\ntenants: [a]",
        "agents: [{id: s, role: sensor, tenant: b}]\ntenants: [a]",
        "agents: [{id: s, role: robot}]",
        "agents: [{id: s, role: sensor, colour: red}]",
        "agents: [{id: s, role: sensor}, {id: s, role: node}]",
    ):
        bad.write_text(text)
        with pytest.raises(ManifestError):
            load_manifest(bad)


@pytest.mark.asyncio
async def test_every_case_from_both_ends(
    profile: GeneratedProfile, secure_broker: MosquittoBroker
) -> None:
    outcomes = await run_cases(profile, secure_broker.port)
    wrong = [o for o in outcomes if not o.ok]
    assert not wrong, "\n".join(map(str, wrong))
    assert len(outcomes) == len(PUB_CASES) + len(SUB_CASES)
    assert sum(not o.case.allowed for o in outcomes) >= 20


@pytest.mark.asyncio
async def test_sensor_cannot_overwrite_a_node_entry(
    profile: GeneratedProfile, secure_broker: MosquittoBroker
) -> None:
    port = secure_broker.port
    async with BusClient(agent_settings(profile, "node-1", port), "node-1") as node:
        await Cms(node).put("slm/nodes/node-1/birth", {"owner": "node-1"})
    async with BusClient(agent_settings(profile, "wear-a1", port), "wear-a1") as sensor:
        with pytest.raises(PublishRefused) as refused:
            await Cms(sensor).put("slm/nodes/node-1/birth", {"owner": "wear-a1"})
        assert refused.value.reason == 0x87
        with pytest.raises(PublishRefused):
            await Cms(sensor).delete("slm/nodes/node-1/birth")
    async with BusClient(agent_settings(profile, "gateway-1", port), "gateway-1") as gateway:
        entry = await Cms(gateway).get("slm/nodes/node-1/birth")
    assert entry is not None
    assert entry.value == {"owner": "node-1"}


@pytest.mark.asyncio
async def test_wrong_password_is_refused(
    profile: GeneratedProfile, secure_broker: MosquittoBroker
) -> None:
    settings = agent_settings(
        profile, "node-1", secure_broker.port, password="wrong", connect_timeout_s=1.0
    )
    with pytest.raises(NotConnected, match="not authorized"):
        async with BusClient(settings, "node-1"):
            pass
    # another agent's valid password is not this agent's either
    other = agent_settings(profile, "ops", secure_broker.port)
    assert other.password is not None
    stolen = agent_settings(
        profile,
        "node-1",
        secure_broker.port,
        password=other.password.get_secret_value(),
        connect_timeout_s=1.0,
    )
    with pytest.raises(NotConnected, match="not authorized"):
        async with BusClient(stolen, "node-1"):
            pass


@pytest.mark.asyncio
async def test_wrong_ca_and_missing_certificate_cannot_connect(
    profile: GeneratedProfile, secure_broker: MosquittoBroker, tmp_path: Path
) -> None:
    other_ca = CertificateAuthority.create("someone else")
    (tmp_path / "other.crt").write_bytes(other_ca.cert_pem)
    wrong = agent_settings(profile, "node-1", secure_broker.port, connect_timeout_s=1.0)
    assert wrong.tls is not None
    wrong = wrong.model_copy(
        update={"tls": wrong.tls.model_copy(update={"ca_file": tmp_path / "other.crt"})}
    )
    with pytest.raises((NotConnected, ssl.SSLError)):
        async with BusClient(wrong, "node-1"):
            pass
    # a client certificate signed by another CA is refused by the broker
    leaf = other_ca.issue("node-1")
    (tmp_path / "c.crt").write_bytes(leaf.cert_pem)
    key = tmp_path / "c.key"
    key.write_bytes(leaf.key_pem)
    os.chmod(key, 0o600)
    good = agent_settings(profile, "node-1", secure_broker.port, connect_timeout_s=1.0)
    assert good.tls is not None
    foreign = good.model_copy(
        update={
            "tls": good.tls.model_copy(
                update={"cert_file": tmp_path / "c.crt", "key_file": tmp_path / "c.key"}
            )
        }
    )
    with pytest.raises((NotConnected, ssl.SSLError)):
        async with BusClient(foreign, "node-1"):
            pass
    nocert = good.model_copy(
        update={"tls": good.tls.model_copy(update={"cert_file": None, "key_file": None})}
    )
    with pytest.raises((NotConnected, ssl.SSLError)):
        async with BusClient(nocert, "node-1"):
            pass
    plain = good.model_copy(update={"tls": None})
    with pytest.raises(NotConnected):
        async with BusClient(plain, "node-1"):
            pass


@pytest.mark.asyncio
async def test_own_ca_signs_the_profile(tmp_path: Path) -> None:
    mine = CertificateAuthority.create("my org CA")
    (tmp_path / "my.crt").write_bytes(mine.cert_pem)
    (tmp_path / "my.key").write_bytes(mine.key_pem)
    from benchmarks.acl_cases import manifest  # noqa: PLC0415

    profile = generate(
        manifest(), tmp_path / "out", ca_cert=tmp_path / "my.crt", ca_key=tmp_path / "my.key"
    )
    assert not (tmp_path / "out" / "ca.key").exists()
    assert (tmp_path / "out" / "ca.crt").read_bytes() == mine.cert_pem
    with MosquittoBroker(config=profile.conf) as broker:
        async with BusClient(agent_settings(profile, "ops", broker.port), "ops") as bus:
            await bus.publish("slm/tenants/clinic-a/usage_limit", b"1")


@pytest.mark.asyncio
async def test_node_and_gateway_serve_a_tenant_on_the_secure_broker(
    profile: GeneratedProfile, secure_broker: MosquittoBroker, tmp_path: Path
) -> None:
    from broker import Chat, ChatMessage, RpcClient, RpcError  # noqa: PLC0415
    from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig  # noqa: PLC0415
    from gateway.config import GatewayConfig  # noqa: PLC0415
    from gateway.service import running_gateway  # noqa: PLC0415
    from tests.helpers import eventually, running_node  # noqa: PLC0415

    port = secure_broker.port

    def bus(agent: str) -> dict[str, object]:
        return {"include": str(profile.agent_files[agent]), "port": port}

    engine = SimulatedEngine(SimulatedEngineConfig(profile="jetson-orin-nano", decode_tps=2000))
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "gateway-1",
            "bus": bus("gateway-1"),
            "http_port": 0,
            "capability": "chat",
            "ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite3",
            "cache_enabled": False,
            "cloud": {"enabled": False},
            "client_tenants_file": str(profile.out / "client-tenants.yaml"),
        }
    )
    question = Chat(messages=(ChatMessage("user", "hello"),), max_tokens=8)
    async with (
        running_node(secure_broker, engine, "node-1", bus=bus("node-1"), capabilities=["chat"]),
        running_gateway(config) as gw,
        BusClient(agent_settings(profile, "wear-a1", port), "wear-a1") as sensor,
        RpcClient(sensor) as rpc,
    ):
        await eventually(lambda: gw.orchestrator.router.order(10, 10, "general") != [], 10)
        got = await rpc.call("computation/query/request", question, timeout=20)
        assert got.node == "node-1"
        with pytest.raises(RpcError) as refused:
            await rpc.call(
                "computation/query/request", question, timeout=20, user={"tenant": "clinic-b"}
            )
        assert refused.value.code.value == "unauthorized"
        # a sensor cannot skip the gateway and ask a node directly
        with pytest.raises(RpcError) as direct:
            await rpc.call("computation/node/node-1/request", question, timeout=2)
        assert direct.value.code.value == "expired"  # RpcTimeout: never delivered


def test_bus_settings_include(tmp_path: Path) -> None:
    from pydantic import ValidationError  # noqa: PLC0415

    from broker import BusSettings  # noqa: PLC0415

    inc = tmp_path / "bus.yaml"
    inc.write_text("host: broker.example\nport: 8883\nusername: n1\npassword: s3cret\n")
    got = BusSettings.model_validate({"include": str(inc), "port": 1884})
    assert (got.host, got.port, got.username) == ("broker.example", 1884, "n1")
    assert "s3cret" not in repr(got)
    with pytest.raises(ValidationError, match="cannot read"):
        BusSettings.model_validate({"include": str(tmp_path / "missing.yaml")})
    inc.write_text("colour: red\n")
    with pytest.raises(ValidationError):
        BusSettings.model_validate({"include": str(inc)})


def test_secure_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from broker.mosquitto_config import message_size_limit, read_template  # noqa: PLC0415
    from edgecollab.cli import main  # noqa: PLC0415

    manifest = Path(__file__).resolve().parent.parent / "configs" / "deployment.yaml"
    out = tmp_path / "secure"
    assert main(["broker", "secure-config", "--manifest", str(manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "agent node-1:" in printed
    assert "password" not in printed.lower()
    conf = (out / "broker" / "mosquitto-secure.conf").read_text()
    assert message_size_limit(conf) == message_size_limit(read_template())
    args = ["broker", "secure-config", "--manifest", str(manifest), "--out", str(out)]
    assert main([*args, "--ca-cert", str(out / "ca.crt")]) == 2  # the key is missing
    (tmp_path / "bad.yaml").write_text("agents: [{id: 'a/b', role: node}]")
    bad = ["broker", "secure-config", "--manifest", str(tmp_path / "bad.yaml"), "--out", str(out)]
    assert main(bad) == 1
    assert "agent id" in capsys.readouterr().err
