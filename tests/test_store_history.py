"""Conversations in Redis: shared by replicas, appended atomically, kept apart by
prefix, forgotten when idle; and a conversation that alternates between two
`agent-runtime serve` replicas reaches the model whole."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_runtime.store.connection import Store
from agent_runtime.store.history import RedisHistory
from conftest import runtime_pb2, stub
from redis_store import eventually, redis_server  # noqa: F401


@pytest.fixture
async def stores(redis_server):  # noqa: F811
    """Stores on the test's redis-server, as several replicas hold them: `make(prefix=...)`."""
    made: list[Store] = []

    def make(prefix: str = "agent-runtime:") -> Store:
        store = Store(redis_server.url, prefix=prefix)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def turn(i: int, tools: int = 0) -> list[dict]:
    return ([{"role": "user", "content": f"q{i}"}] + [{"role": "tool", "content": f"t{i}"}] * tools
            + [{"role": "assistant", "content": f"a{i}"}])


def whole_turns(messages: list[dict]) -> list[int]:
    """The turn numbers of `messages`, asserting every turn is whole and contiguous."""
    numbers = []
    while messages:
        assert messages[0]["role"] == "user", messages
        i = int(messages[0]["content"][1:])
        length = next((k for k in range(1, len(messages)) if messages[k]["role"] == "user"), len(messages))
        assert messages[:length] == turn(i, length - 2), messages[:length]
        numbers.append(i)
        messages = messages[length:]
    return numbers


async def test_concurrent_appends_from_two_replicas_are_whole_and_none_is_lost(stores):
    a, b = RedisHistory(stores(), max_messages=1000), RedisHistory(stores(), max_messages=1000)
    await asyncio.gather(*(history.append("u\x1fs\x1fagent", turn(i, tools=i % 3))
                           for i, history in zip(range(60), [a, b] * 30)))
    assert sorted(whole_turns(await b.load("u\x1fs\x1fagent"))) == list(range(60))


async def test_concurrent_appends_with_trimming_keep_the_newest_whole_turns(stores):
    a, b = RedisHistory(stores(), max_messages=10), RedisHistory(stores(), max_messages=10)
    for i in range(0, 40, 2):
        await asyncio.gather(a.append("k", turn(i, tools=1)), b.append("k", turn(i + 1)))
    messages = await a.load("k")
    assert len(messages) <= 10
    assert set(whole_turns(messages)) <= {36, 37, 38, 39} and 39 in whole_turns(messages)


async def test_prefixes_keep_deployments_apart(stores, redis_server):  # noqa: F811
    team_a, team_b = stores("team-a:"), stores("team-b:")
    await RedisHistory(team_a).append("k", turn(1))
    assert await RedisHistory(team_b).load("k") == []
    assert await RedisHistory(team_a).load("k") == turn(1)
    assert await team_a.redis.keys("*") == [b"team-a:history:k"]


async def test_an_idle_conversation_expires_and_use_renews_it(stores):
    store = stores()
    history = RedisHistory(store, ttl=30)
    await history.append("k", turn(1))
    await store.redis.pexpire(store.key("history", "k"), 5000)
    await history.load("k")
    assert 25_000 < await store.redis.pttl(store.key("history", "k")) <= 30_000
    short = RedisHistory(store, ttl=0.05)
    await short.append("idle", turn(2))
    assert await short.load("idle") == turn(2)

    async def expired() -> bool:
        return not await store.redis.exists(store.key("history", "idle"))

    await eventually(expired, "the idle conversation to expire", timeout=5)
    assert await short.load("idle") == []


@pytest.mark.parametrize("settings", [{"max_messages": 0}, {"ttl": 0}])
async def test_bad_bounds_are_refused(stores, settings):
    with pytest.raises(ValueError):
        RedisHistory(stores(), **settings)


async def test_a_conversation_alternating_between_two_replicas_reaches_the_model_whole(
        tmp_path, fake_llm, redis_server, server_process, channel_to):  # noqa: F811
    config = tmp_path / "agents.yaml"
    config.write_text(f"agents:\n  - name: chat\n    model: openai/gpt-test\n"
                      f"    base_url: {fake_llm.base_url}\n    api_key_env: FAKE_LLM_KEY\n")
    replicas = [server_process("--config", str(config), "--store-url", redis_server.url,
                               env={"FAKE_LLM_KEY": "test"}) for _ in range(2)]
    fake_llm.reply("Hello Zed").reply("Oslo is nice").reply("You live in Oslo")
    said = ["my name is Zed", "I live in Oslo", "where do I live?"]
    for text, replica in zip(said, [replicas[0], replicas[1], replicas[0]]):
        reply = await stub(channel_to(replica.address)).Invoke(
            runtime_pb2.InvokeRequest(session_id="s1", user_id="u1", input=runtime_pb2.Payload(text=text)),
            timeout=30)
        assert reply.output.text
    assert [fake_llm.user_messages(i) for i in range(3)] == [said[:1], said[:2], said]
    assert reply.output.text == "You live in Oslo"
