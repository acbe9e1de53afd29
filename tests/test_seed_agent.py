"""The seed's RuntimeServer snippet (only its import lines changed) as a script:
its Agent answers over gRPC through the fake OpenAI-compatible provider."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from conftest import LISTENING, runtime_pb2, stub

SEED = Path(__file__).with_name("seeds") / "redpanda_runtime_server.py"  # verbatim but its imports


async def test_seed_agent_answers_through_the_provider(fake_llm, channel_to, tmp_path):
    env = {**os.environ, "OPENAI_BASE_URL": fake_llm.base_url, "OPENAI_API_KEY": "seed-key",
           "AGENT_RUNTIME_PORT": "0", "AGENT_RUNTIME_METRICS_PORT": "0"}
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(SEED), env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = LISTENING.search(line)
        assert match, f"{line!r} {log.read_text()}"
        fake_llm.reply("Hi external user!")
        reply = await stub(channel_to(f"{match.group(1)}:{match.group(2)}")).Invoke(
            runtime_pb2.InvokeRequest(input=runtime_pb2.Payload(text="Hello from outside!")))
        assert reply.agent == "MyRuntimeAgent" and reply.output.text == "Hi external user!"
        request = fake_llm.requests[0]
        assert request["model"] == "gpt-3.5-turbo"
        assert request["messages"] == [
            {"role": "system", "content": "You are now accessible via gRPC. Respond clearly."},
            {"role": "user", "content": "Hello from outside!"}]
        assert request["_headers"]["authorization"] == "Bearer seed-key"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
