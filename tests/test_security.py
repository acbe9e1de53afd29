"""TLS, mutual TLS with certificate rotation, and bearer-token authentication,
with certificates made by the test; no secret reaches a log or an error."""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent_runtime import ConfigError, ServerConfig
from agent_runtime.cli import build_parser
from certs import CA
from conftest import runtime_pb2 as pb
from conftest import runtime_pb2_grpc

TOKEN = "s3cret-token-value"
REQUEST = pb.InvokeRequest(input=pb.Payload(text="hi"))


@pytest.fixture
async def open_channels():
    channels = []

    def track(channel):
        channels.append(channel)
        return channel

    yield track
    for channel in channels:
        await channel.close()


def tls_channel(track, address, ca_pem, client=None):
    creds = grpc.ssl_channel_credentials(ca_pem, client.key if client else None, client.cert if client else None)
    return track(grpc.aio.secure_channel(address, creds))


async def invoke(channel, metadata=None):
    return await runtime_pb2_grpc.AgentRuntimeStub(channel).Invoke(REQUEST, metadata=metadata, timeout=10)


async def code_of(awaitable):
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def health(channel, metadata=None):
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=metadata,
                                                            timeout=10)
    return reply.status


async def test_tls_serves_and_rejects_a_client_that_trusts_another_ca(serve, open_channels, tmp_path):
    ca, other = CA("ca"), CA("other")
    cert, key = ca.issue("server").write(tmp_path, "server")
    server = await serve(tls_cert=str(cert), tls_key=str(key))
    assert (await invoke(tls_channel(open_channels, server.address, ca.pem))).output.text == "hi"
    assert await code_of(invoke(tls_channel(open_channels, server.address, other.pem))) \
        is grpc.StatusCode.UNAVAILABLE
    plain = open_channels(grpc.aio.insecure_channel(server.address))
    assert await code_of(invoke(plain)) is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(serve, open_channels, tmp_path):
    server_ca, client_ca, rogue_ca = CA("server-ca"), CA("client-ca"), CA("rogue")
    cert, key = server_ca.issue("server").write(tmp_path, "server")
    (tmp_path / "clients.pem").write_bytes(client_ca.pem)
    server = await serve(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(tmp_path / "clients.pem"))
    good = client_ca.issue("alice", server=False)
    rogue = rogue_ca.issue("mallory", server=False)
    address = server.address
    assert (await invoke(tls_channel(open_channels, address, server_ca.pem, good))).output.text == "hi"
    assert await code_of(invoke(tls_channel(open_channels, address, server_ca.pem))) \
        is grpc.StatusCode.UNAVAILABLE
    assert await code_of(invoke(tls_channel(open_channels, address, server_ca.pem, rogue))) \
        is grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificate_files_are_picked_up_by_new_connections(serve, open_channels, tmp_path):
    """Like a Kubernetes Secret update: the mounted files are replaced by new ones."""
    old_ca, new_ca = CA("old"), CA("new")
    cert, key = old_ca.issue("server").write(tmp_path, "server")
    server = await serve(tls_cert=str(cert), tls_key=str(key))
    kept = tls_channel(open_channels, server.address, old_ca.pem)
    assert (await invoke(kept)).output.text == "hi"
    fresh = new_ca.issue("server")
    for path, data in ((cert, fresh.cert), (key, fresh.key)):
        path.with_suffix(".new").write_bytes(data)
        os.replace(path.with_suffix(".new"), path)
    assert (await invoke(tls_channel(open_channels, server.address, new_ca.pem))).output.text == "hi"
    assert await code_of(invoke(tls_channel(open_channels, server.address, old_ca.pem))) \
        is grpc.StatusCode.UNAVAILABLE
    assert (await invoke(kept)).output.text == "hi"  # established connections stay up


async def test_half_written_certificate_keeps_the_previous_one(serve, open_channels, tmp_path, caplog):
    ca = CA("ca")
    cert, key = ca.issue("server").write(tmp_path, "server")
    server = await serve(tls_cert=str(cert), tls_key=str(key))
    cert.write_bytes(cert.read_bytes()[:100])
    caplog.set_level(logging.WARNING, "agent_runtime.tls")
    assert (await invoke(tls_channel(open_channels, server.address, ca.pem))).output.text == "hi"
    assert any("keeping the previous certificate" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("settings, error", [
    ({"tls_cert": "a.crt"}, "tls_cert and tls_key must be set together"),
    ({"tls_client_ca": "ca.pem"}, "needs tls_cert"),
    ({"auth_token": TOKEN, "auth_token_file": "t"}, "not both"),
])
def test_inconsistent_security_settings_are_refused(settings, error):
    with pytest.raises(ConfigError, match=error) as caught:
        ServerConfig(**settings)
    assert TOKEN not in str(caught.value)


async def test_missing_tls_files_refuse_to_start(serve, tmp_path):
    with pytest.raises(ConfigError, match="TLS files cannot be used"):
        await serve(tls_cert=str(tmp_path / "none.crt"), tls_key=str(tmp_path / "none.key"))


async def test_token_auth_accepts_the_token_and_refuses_others(serve, open_channels, caplog):
    caplog.set_level(logging.DEBUG)
    server = await serve(auth_token=TOKEN)
    channel = open_channels(grpc.aio.insecure_channel(server.address))
    ok = (("authorization", f"Bearer {TOKEN}"),)
    assert (await invoke(channel, ok)).output.text == "hi"
    assert (await invoke(channel, (("authorization", f"bearer  {TOKEN} "),))).output.text == "hi"
    for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),),
                     (("authorization", f"Basic {TOKEN}"),), (("authorization", "Bearer "),),
                     (("x-other", f"Bearer {TOKEN}"),)):
        assert await code_of(invoke(channel, metadata)) is grpc.StatusCode.UNAUTHENTICATED
    stream = runtime_pb2_grpc.AgentRuntimeStub(channel).InvokeStream(REQUEST, timeout=10)
    assert await code_of(stream.read()) is grpc.StatusCode.UNAUTHENTICATED
    unknown = channel.unary_unary("/agent_runtime.v1.AgentRuntime/Nope")
    assert await code_of(unknown(b"")) is grpc.StatusCode.UNAUTHENTICATED  # no probing for methods
    assert await health(channel) == health_pb2.HealthCheckResponse.SERVING  # exempt by default
    assert TOKEN not in repr(server.config)
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


async def test_exemptions_are_configurable(serve, open_channels):
    server = await serve(auth_token=TOKEN, auth_exempt=())
    channel = open_channels(grpc.aio.insecure_channel(server.address))
    assert await code_of(health(channel)) is grpc.StatusCode.UNAUTHENTICATED
    assert await health(channel, (("authorization", f"Bearer {TOKEN}"),)) == health_pb2.HealthCheckResponse.SERVING


async def test_token_file_is_reloaded_when_it_changes(serve, open_channels, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = await serve(auth_token_file=str(token_file))
    channel = open_channels(grpc.aio.insecure_channel(server.address))
    assert (await invoke(channel, (("authorization", f"Bearer {TOKEN}"),))).output.text == "hi"
    (tmp_path / "token.new").write_text("rotated-token")
    os.replace(tmp_path / "token.new", token_file)
    new = (("authorization", "Bearer rotated-token"),)
    for _ in range(100):  # looked at again within about a second
        if await code_of(invoke(channel, new)) is grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.05)
    assert await code_of(invoke(channel, new)) is grpc.StatusCode.OK
    assert await code_of(invoke(channel, (("authorization", f"Bearer {TOKEN}"),))) \
        is grpc.StatusCode.UNAUTHENTICATED
    token_file.write_text("")  # an emptied file lets nobody in
    for _ in range(100):
        if await code_of(invoke(channel, new)) is grpc.StatusCode.UNAUTHENTICATED:
            break
        await asyncio.sleep(0.05)
    assert await code_of(invoke(channel, new)) is grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(invoke(channel, (("authorization", "Bearer "),))) is grpc.StatusCode.UNAUTHENTICATED


async def test_empty_token_file_refuses_to_start(serve, tmp_path):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        await serve(auth_token_file=str(tmp_path / "token"))


def test_token_has_no_command_line_flag():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--auth-token", TOKEN])


async def test_token_from_environment_with_tls_in_a_subprocess(server_process, open_channels, tmp_path):
    ca = CA("ca")
    cert, key = ca.issue("server").write(tmp_path, "server")
    proc = server_process("--tls-cert", str(cert), "--tls-key", str(key), "--no-reflection",
                          env={"AGENT_RUNTIME_AUTH_TOKEN": TOKEN})
    channel = tls_channel(open_channels, proc.address, ca.pem)
    assert (await invoke(channel, (("authorization", f"Bearer {TOKEN}"),))).output.text == "hi"
    assert await code_of(invoke(channel)) is grpc.StatusCode.UNAUTHENTICATED
    assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    proc.signal()
    assert proc.wait(30) == 0
    assert TOKEN not in proc.proc.stderr.read()
