"""Configuration: flags, AGENT_RUNTIME_* variables, config files, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime import ConfigError, ServerConfig
from agent_runtime.builder import AgentBuilder, load_object
from agent_runtime.cli import build_parser, load_server_config
from conftest import LISTENING, ROOT


def config_from(argv: list[str], environ: dict[str, str] | None = None):
    args = build_parser().parse_args(["serve", *argv])
    return load_server_config(args, environ or {})


def test_defaults_and_echo_agent():
    cfg, agents = config_from([])
    assert cfg == ServerConfig()
    assert [type(a).__name__ for a in agents] == ["EchoAgent"]


def test_env_then_flags_win():
    env = {"AGENT_RUNTIME_MAX_CONCURRENCY": "3", "AGENT_RUNTIME_PORT": "6000",
           "AGENT_RUNTIME_REFLECTION": "false", "AGENT_RUNTIME_AGENTS": "agents_for_tests:upper"}
    cfg, agents = config_from(["--port", "7000"], env)
    assert (cfg.max_concurrency, cfg.port, cfg.reflection) == (3, 7000, False)
    assert [a.__name__ for a in agents] == ["upper"]
    cfg, agents = config_from(["--agent", "agents_for_tests:slow", "--agent", "agents_for_tests:upper",
                               "--reflection"], env)
    assert cfg.reflection and [a.__name__ for a in agents] == ["slow", "upper"]


def test_every_setting_has_a_flag_and_env_var():
    from agent_runtime import config

    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    readme = (ROOT / "README.md").read_text()
    for f in config.fields():
        assert config.flag_name(f) in help_text
        assert config.env_name(f.name) in help_text
        assert f"`{config.env_name(f.name)}`" in readme, f"README's settings table lacks {f.name}"


@pytest.mark.parametrize("argv, env, message", [
    (["--max-concurrency", "-1"], {}, "max_concurrency must be >= 0"),
    (["--port", "70000"], {}, "port must be <= 65535"),
    (["--max-queue", "many"], {}, "max_queue (from command line): 'many' is not valid"),
    ([], {"AGENT_RUNTIME_REFLECTION": "maybe"}, "reflection (from environment): 'maybe' is not valid"),
    (["--agent", "no_such_module:agent"], {}, "cannot import module 'no_such_module'"),
    (["--agent", "agents_for_tests:nope"], {}, "module 'agents_for_tests' has no attribute 'nope'"),
    (["--agent", "agents_for_tests"], {}, "is not a module:attribute reference"),
    (["--config", "/no/such/file.yaml"], {}, "cannot read config file '/no/such/file.yaml'"),
])
def test_clear_errors(argv, env, message):
    with pytest.raises(ConfigError) as err:
        config_from(argv, env)
    assert message in str(err.value)


def test_yaml_config_file(tmp_path):
    path = tmp_path / "agents.yaml"
    path.write_text("server:\n  max_concurrency: 5\n  queue_timeout: 2.5\n"
                    "agents:\n  - ref: agents_for_tests:upper\n    name: shout\n"
                    "  - agents_for_tests:slow\n"
                    "  - name: helper\n    model: openai/gpt-4o-mini\n    instructions: Be brief.\n"
                    "    tools: [agent_runtime.echo:reverse]\n")
    cfg, agents = config_from(["--config", str(path)], {"AGENT_RUNTIME_QUEUE_TIMEOUT": "9"})
    assert cfg.max_concurrency == 5 and cfg.queue_timeout == 9.0
    assert agents[0].name == "shout" and agents[1].__name__ == "slow"
    assert agents[2].name == "helper" and agents[2].tools[0].name == "reverse"


def test_toml_config_file(tmp_path):
    path = tmp_path / "agents.toml"
    path.write_text('[server]\nmax_queue = 7\n\n[[agents]]\nref = "agents_for_tests:upper"\n')
    cfg, agents = config_from([], {"AGENT_RUNTIME_CONFIG_FILE": str(path)})
    assert cfg.max_queue == 7 and agents[0].__name__ == "upper"


@pytest.mark.parametrize("text, message", [
    ("agents: [", "is not valid YAML (config files are read as YAML, or as TOML when named *.toml)"),
    ("- a\n- b\n", "must hold a mapping"),
    ("servers: {}\n", "unknown sections ['servers']"),
    ("server:\n  nope: 1\nagents: [agents_for_tests:upper]\n", "unknown setting 'nope'"),
    ("server:\n  max_concurrency: 1.5\n", "expected a whole number"),
    ("agents:\n  - {name: x, colour: red}\n", "unknown keys ['colour']"),
    ("agents:\n  - {ref: agents_for_tests:upper, model: m}\n", "`ref` takes only `name`"),
    ("agents:\n  - 42\n", "agents[0] must be a module:attr string or a mapping"),
])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config_from(["--config", str(path)])
    assert message in str(err.value)


@pytest.mark.parametrize("name, text, message", [
    ("agents.conf", "[server]\nmax_queue = 7\n", "'{path}' is not valid YAML (config files are read as YAML, "
                                                  "or as TOML when named *.toml)"),
    ("agents.toml", "agents: [x]\n", "'{path}' is not valid TOML (config files are read as YAML, or as TOML "
                                     "when named *.toml)"),
])
def test_a_config_file_that_does_not_parse_says_which_formats_are_read(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config_from(["--config", str(path)])
    assert message.format(path=path) in str(err.value)


def test_builder_needs_agents():
    with pytest.raises(ConfigError, match="non-empty `agents` list"):
        AgentBuilder().build({"agents": []})
    assert load_object("agent_runtime.echo:EchoAgent.name") == "echo"


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent_runtime", *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


SCRIPT = str(Path(sys.executable).parent / "agent-runtime")  # the console script, not `python -m`
HELLO = "async def hello(input):\n    return f'hello {input}'\n"


@pytest.mark.parametrize("app_dir", [None, "agents"])
def test_the_script_imports_agents_from_the_app_dir(tmp_path, app_dir):
    """`agent-runtime serve --agent myagents:hello` in the folder of myagents.py (or
    naming it with --app-dir) serves it, as `python -m agent_runtime` always did."""
    folder = tmp_path / (app_dir or "")
    folder.mkdir(exist_ok=True)
    (folder / "myagents.py").write_text(HELLO)
    extra = ["--app-dir", app_dir] if app_dir else []
    proc = subprocess.Popen([SCRIPT, "serve", "--port", "0", "--metrics-port", "0", "--agent", "myagents:hello",
                             *extra], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert LISTENING.search(line), (line, proc.stderr.read() if proc.poll() is not None else "")
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_a_module_not_found_says_where_it_was_looked_for(tmp_path):
    missing = subprocess.run([SCRIPT, "serve", "--agent", "myagents:hello"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith(f"No module named 'myagents' (looked in {tmp_path} (--app-dir) "
                                           "and the installed packages)")
    nowhere = run_cli("serve", "--app-dir", str(tmp_path / "nope"))
    assert nowhere.returncode == 2
    assert nowhere.stderr.strip() == f"agent-runtime: error: app_dir {str(tmp_path / 'nope')!r} is not a folder"


def test_cli_exit_codes_and_messages():
    bad = run_cli("serve", "--agent", "nope:x")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("agent-runtime: error: cannot import module 'nope' (from 'nope:x'): "
                                  f"No module named 'nope' (looked in {ROOT} (--app-dir) and the "
                                  "installed packages)")
    usage = run_cli("serve", "--bogus")
    assert usage.returncode == 2 and "unrecognized arguments: --bogus" in usage.stderr
    assert run_cli().returncode == 2


def test_cli_port_in_use(server_process):
    first = server_process()
    port = first.address.rsplit(":", 1)[1]
    second = run_cli("serve", "--host", "127.0.0.1", "--port", port)
    assert second.returncode == 1
    assert second.stderr == (f"agent-runtime: error: cannot listen on 127.0.0.1:{port}: port {port} is taken by "
                             "another process; stop it, or pick another port (--port or AGENT_RUNTIME_PORT; 0 "
                             "picks a free one)\n")  # one line: not gRPC core's raw add_port.cc line first
