"""The echo agent over a real in-process server: the fixtures work."""

from conftest import runtime_pb2, stub


async def test_invoke_echo(serve, channel_to):
    server = await serve()
    reply = await stub(channel_to(server.address)).Invoke(
        runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="hi")))
    assert reply.output.text == "hi"
    assert len(reply.run_id) == 32
