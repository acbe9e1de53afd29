"""Model names, endpoints and keys; the bounded history store; Agents from config
files; and a light `import agent_runtime`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent_runtime import Agent, ConfigError, InMemoryHistory, MCPServer, ServerMisconfigured
from agent_runtime.builder import AgentBuilder, read_config_file
from agent_runtime.llm import ChatModel, split_model
from redis_store import history_stores  # noqa: F401


@pytest.mark.parametrize("name, expected", [
    ("openai/gpt-3.5-turbo", ("openai", "gpt-3.5-turbo")),
    ("gpt-4o", ("openai", "gpt-4o")),
    ("NVIDIA/meta/llama-3.1-8b-instruct", ("nvidia", "meta/llama-3.1-8b-instruct")),
])
def test_split_model(name, expected):
    assert split_model(name) == expected


@pytest.mark.parametrize("name", ["/gpt", "openai/"])
def test_malformed_model_names(name):
    with pytest.raises(ValueError, match="is not `provider/model`"):
        split_model(name)


def test_endpoint_precedence(monkeypatch):
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MY_KEY"):
        monkeypatch.delenv(var, raising=False)
    model = ChatModel("openai/gpt-x")
    with pytest.raises(ServerMisconfigured, match="must set OPENAI_API_KEY"):
        model.endpoint()
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    assert (model.endpoint().base_url, model.endpoint().api_key) == ("https://api.openai.com/v1", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy:4000/v1")
    assert model.endpoint().base_url == "http://proxy:4000/v1"
    own = ChatModel("openai/gpt-x", base_url="http://own/v1", api_key_env="MY_KEY")
    assert (own.endpoint().base_url, own.endpoint().api_key) == ("http://own/v1", "unused")
    monkeypatch.setenv("MY_KEY", "mine")
    assert own.endpoint().api_key == "mine"
    assert ChatModel("openai/gpt-x", api_key="direct").endpoint().api_key == "direct"


def test_other_providers(monkeypatch):
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    with pytest.raises(ServerMisconfigured, match="must set NVIDIA_API_KEY"):
        ChatModel("nvidia/meta/llama").endpoint()
    monkeypatch.setenv("NVIDIA_API_KEY", "nv")
    assert ChatModel("nvidia/meta/llama").endpoint().base_url == "https://integrate.api.nvidia.com/v1"
    monkeypatch.delenv("OLLAMA_BASE_URL", raising=False)
    assert ChatModel("ollama/llama3.2").endpoint().base_url == "http://localhost:11434/v1"
    monkeypatch.delenv("ACME_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="unknown model provider 'acme'.*set ACME_BASE_URL"):
        Agent(name="a", model="acme/m1")
    monkeypatch.setenv("ACME_BASE_URL", "http://acme/v1")
    assert Agent(name="a", model="acme/m1").chat_model.endpoint().base_url == "http://acme/v1"


@pytest.mark.parametrize("settings, message", [
    ({"request_timeout": 0}, "request_timeout must be > 0"),
    ({"max_retries": -1}, "max_retries >= 0"),
])
def test_bad_model_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        Agent(name="a", **settings)


async def test_history_is_bounded_by_whole_turns(history_stores):  # noqa: F811
    history = history_stores.make(max_messages=4)
    turn = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    await history.append("s", turn)
    await history.append("s", [{"role": "user", "content": "q2"},
                               {"role": "assistant", "tool_calls": []}, {"role": "tool", "content": "t"},
                               {"role": "assistant", "content": "a2"}])
    assert [m.get("content") for m in await history.load("s")] == ["q2", None, "t", "a2"]
    long_turn = [{"role": "user", "content": "q3"}] + [{"role": "tool", "content": str(i)} for i in range(5)]
    await history.append("s", long_turn)
    assert await history.load("s") == long_turn  # one turn longer than the bound stays whole
    assert await history.load("other") == []


async def test_history_drops_least_recently_used_sessions():
    history = InMemoryHistory(max_sessions=2, max_messages=10)
    for key in ("a", "b"):
        await history.append(key, [{"role": "user", "content": key}])
    await history.load("a")
    await history.append("c", [{"role": "user", "content": "c"}])
    assert len(history) == 2 and await history.load("b") == [] and await history.load("a")
    with pytest.raises(ValueError):
        InMemoryHistory(max_sessions=0)


def test_agent_from_config_file(tmp_path, monkeypatch):
    path = tmp_path / "agents.yaml"
    path.write_text("""
agents:
  - name: helper
    model: vllm/qwen2.5
    base_url: http://vllm:8000/v1
    api_key_env: HELPER_KEY
    request_timeout: 12
    max_retries: 4
    max_turns: 3
    output_type: agent_runtime.payload:Blob
    mcp_servers:
      - http://tools:8000/mcp
      - {command: python, args: [-m, tools], tools: [lookup]}
""")
    [agent] = AgentBuilder().build(read_config_file(path))
    assert (agent.model, agent.base_url, agent.api_key_env) == ("vllm/qwen2.5", "http://vllm:8000/v1", "HELPER_KEY")
    assert (agent.request_timeout, agent.max_retries, agent.max_turns) == (12, 4, 3)
    assert agent.chat_model.timeout == 12 and agent.response_format["json_schema"]["name"] == "Blob"
    assert agent.mcp_servers == (MCPServer(url="http://tools:8000/mcp"),
                                 MCPServer(command="python", args=("-m", "tools"), tools=["lookup"]))
    monkeypatch.setenv("HELPER_KEY", "k")
    assert agent.chat_model.endpoint().api_key == "k"


@pytest.mark.parametrize("entry, message", [
    ({"name": "a", "mcp_servers": [3]}, "an mcp_servers entry must be a URL or a mapping"),
    ({"name": "a", "mcp_servers": [{"url": "http://x", "command": "y"}]}, "exactly one of `url`"),
    ({"name": "a", "model": "nowhere/m"}, "unknown model provider 'nowhere'"),
    ({"name": "a", "max_retries": -2}, "max_retries >= 0"),
    ({"name": "a", "api_key": "secret"}, "unknown keys \\['api_key'\\]"),
])
def test_bad_agent_config(entry, message, monkeypatch):
    monkeypatch.delenv("NOWHERE_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=message):
        AgentBuilder().build({"agents": [entry]})


def test_import_stays_light():
    """The SDKs load with the agents that need them (at start-up), not with the package."""
    code = ("import sys, agent_runtime\n"
            "def loaded(): return sorted({m.split('.')[0] for m in sys.modules} & {'openai', 'mcp'})\n"
            "print(loaded())\n"
            "agent_runtime.Agent(name='a')\n"
            "print(loaded())\n"
            "agent_runtime.MCPServer(url='http://x/mcp')\n"
            "print(loaded())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == ["[]", "['openai']", "['mcp', 'openai']"]


def test_mcp_server_without_the_mcp_package():
    code = ("import sys; sys.modules['mcp'] = None  # as if not installed\n"
            "import agent_runtime\n"
            "try:\n    agent_runtime.MCPServer(url='http://x/mcp')\n"
            "except ValueError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "MCP tools need the `mcp` package: pip install 'agent-runtime[mcp]'"
