"""`paav serve` through the real clients people point at it, no mocks: the official `ollama` Python
client and simonw's `llm` CLI (a subprocess, configured through its `extra-openai-models.yaml`), on
the tiny booster; then the `openai` client, `ollama` and `llm` on the real default booster.

Every text is checked against `Booster.enhance` with the same seed on a booster of the test's own,
as tests/test_serve.py does (which covers the `openai` client on the tiny booster).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from test_serve import Running

from paav_cli import __version__, load_booster
from paav_cli.errors import UserError
from paav_cli.serve.app import create_app
from paav_cli.serve.batcher import Batcher

ollama = pytest.importorskip("ollama", reason="the official `ollama` Python client is not installed "
                                              "(pip install '.[test]')")
if importlib.util.find_spec("llm") is None:
    pytest.skip("simonw's `llm` CLI is not installed (pip install '.[test]')", allow_module_level=True)

PROMPT = "a cat playing piano"
KEY = "k-s3cret"


@pytest.fixture(scope="module")
def server(batcher):
    with Running(create_app({"tiny": batcher})) as running:
        yield running


@pytest.fixture(scope="module")
def keyed(batcher):
    """The same booster behind a server that needs `Authorization: Bearer KEY`."""
    with Running(create_app({"tiny": batcher}, api_key=KEY)) as running:
        yield running


# -- the official ollama client ----------------------------------------------------------------

def test_ollama_generate_and_chat_streamed_or_not_are_the_boosters_enhancement(server, reference):
    client = ollama.Client(host=server.url, timeout=60)
    options = {"seed": 5, "temperature": 0.8}
    [expected] = reference.enhance(PROMPT, seed=5, temperature=0.8)

    answer = client.generate(model="tiny", prompt=PROMPT, options=options)
    assert answer.response == expected.text
    assert answer.model == "tiny" and answer.done is True and answer.done_reason == "stop"
    assert answer.eval_count == expected.tokens and answer.created_at.endswith("Z")
    assert answer["context"] == []  # ComfyUI-Ollama's Generate node reads response["context"]

    parts = list(client.generate(model="tiny", prompt=PROMPT, options=options, stream=True))
    assert "".join(p.response for p in parts) == expected.text
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True] and parts[-1].done_reason == "stop"

    messages = [{"role": "system", "content": "You rewrite prompts."}, {"role": "user", "content": PROMPT}]
    chat = client.chat(model="tiny:latest", messages=messages, options=options)
    assert chat.message.role == "assistant" and chat.message.content == expected.text
    assert chat.done is True and chat.eval_count == expected.tokens

    parts = list(client.chat(model="tiny", messages=messages, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == expected.text
    assert all(p.message.role == "assistant" for p in parts) and parts[-1].done is True

    [greedy] = reference.enhance("a fox in the snow", seed=2, max_tokens=40)
    assert client.generate(model="tiny", prompt="a fox in the snow",
                           options={"seed": 2, "num_predict": 40}).response == greedy.text


def test_ollama_list_shows_the_served_booster_and_version_answers(server):
    [model] = ollama.Client(host=server.url).list().models
    assert model.model == "tiny" and model.details.format == "gguf" and model.modified_at is not None
    assert httpx2.get(f"{server.url}/api/version").json() == {"version": __version__}  # Open WebUI's check


def test_ollama_a_wrong_model_is_a_404_naming_what_is_served(server):
    client = ollama.Client(host=server.url)
    calls = [lambda: client.generate(model="llama3", prompt=PROMPT),
             lambda: list(client.generate(model="llama3", prompt=PROMPT, stream=True)),
             lambda: client.chat(model="llama3", messages=[{"role": "user", "content": PROMPT}])]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 404
        assert caught.value.error == "no model `llama3` on this server; it serves tiny."


def test_ollama_sends_the_api_key_as_a_header_or_from_ollama_api_key(keyed, reference, monkeypatch):
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=keyed.url).generate(model="tiny", prompt=PROMPT)
    assert caught.value.status_code == 401 and "needs an API key" in caught.value.error

    [expected] = reference.enhance(PROMPT, seed=3)
    client = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"})
    assert client.generate(model="tiny", prompt=PROMPT, options={"seed": 3}).response == expected.text
    assert "".join(p.message.content for p in client.chat(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], options={"seed": 3}, stream=True)) \
        == expected.text
    assert [m.model for m in client.list().models] == ["tiny"]

    monkeypatch.setenv("OLLAMA_API_KEY", KEY)  # the client reads it when no Authorization header is given
    assert ollama.Client(host=keyed.url).generate(model="tiny", prompt=PROMPT,
                                                  options={"seed": 3}).response == expected.text


# -- simonw's llm CLI --------------------------------------------------------------------------

def llm_entry(url: str, model_id: str, model_name: str, key_name: str | None = None) -> str:
    """One model in llm's extra-openai-models.yaml, as the README shows it."""
    entry = f"- model_id: {model_id}\n  model_name: {model_name}\n  api_base: {url}/v1\n"
    return entry + (f"  api_key_name: {key_name}\n" if key_name else "")


class Llm:
    """The real `llm` command line with its own user folder (LLM_USER_PATH) and home, both under tmp."""

    def __init__(self, tmp_path: Path, yaml: str):
        self.user_dir, self.home = tmp_path / "llm", tmp_path / "home"
        self.user_dir.mkdir()
        self.home.mkdir()
        (self.user_dir / "extra-openai-models.yaml").write_text(yaml)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        # Without LLM_USER_PATH llm would use $XDG_CONFIG_HOME/io.datasette.llm (~/.config/...): both
        # point under the tmp home, which must stay empty. No plugins: only llm's own OpenAI models.
        env = {**os.environ, "LLM_USER_PATH": str(self.user_dir), "HOME": str(self.home),
               "XDG_CONFIG_HOME": str(self.home / ".config"), "LLM_LOAD_PLUGINS": ""}
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_MODEL", "LLM_OPENAI_SHOW_RESPONSES"):
            env.pop(name, None)
        proc = subprocess.run([sys.executable, "-m", "llm", *args], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def prompt(self, model: str, *args: str) -> str:
        """`llm -m MODEL PROMPT ARGS`, not logged; what it printed, less the newline it ends with."""
        out = self("-m", model, PROMPT, "--no-log", *args).stdout
        assert out.endswith("\n") and not out.endswith("\n\n"), out
        return out[:-1]

    def touched_nothing_else(self) -> None:
        """llm wrote only into LLM_USER_PATH, never into a config folder under the home."""
        assert not any(self.home.rglob("*")), sorted(self.home.rglob("*"))


def test_llm_streams_or_not_the_boosters_enhancement(server, reference, tmp_path):
    llm = Llm(tmp_path, llm_entry(server.url, "paav-tiny", "tiny"))
    options = ("-o", "seed", "5", "-o", "temperature", "0.8")
    [expected] = reference.enhance(PROMPT, seed=5, temperature=0.8)
    assert llm.prompt("paav-tiny", *options) == expected.text  # llm streams by default
    assert llm.prompt("paav-tiny", *options, "--no-stream") == expected.text
    llm.touched_nothing_else()


def test_llm_sends_the_key_named_by_api_key_name(keyed, reference, tmp_path):
    llm = Llm(tmp_path, llm_entry(keyed.url, "paav-tiny", "tiny", key_name="paav"))
    llm("keys", "set", "paav", "--value", KEY)  # into LLM_USER_PATH/keys.json
    assert (llm.user_dir / "keys.json").is_file()
    assert llm.prompt("paav-tiny", "-o", "seed", "3") == reference.enhance(PROMPT, seed=3)[0].text
    llm.touched_nothing_else()


# -- the real default booster through each client ---------------------------------------------

@pytest.fixture(scope="module")
def default_server(shared_cache):
    with pytest.MonkeyPatch.context() as m:
        m.setenv("PAAV_CACHE", str(shared_cache))
        m.setenv("HF_HUB_OFFLINE", "1")
        try:
            booster = load_booster("default", threads=1, parallel=4)
        except UserError as e:
            pytest.skip(f"the real default booster is not available here: {e}")
    batcher = Batcher(booster)
    try:
        with Running(create_app({"default": batcher})) as running:
            yield running
    finally:
        batcher.close()
        booster.close()


@pytest.mark.real_model
def test_the_default_booster_streams_the_same_text_through_openai_ollama_and_llm(default_server, tmp_path):
    seed, tokens = 3, 48
    client = default_server.openai()
    messages = [{"role": "user", "content": PROMPT}]

    def answer() -> str:
        return client.chat.completions.create(model="default", seed=seed, max_tokens=tokens,
                                              messages=messages).choices[0].message.content

    # llama.cpp keeps the last prompt's cache: a text follows the same path, to the last bit, when the
    # request before it had the same prompt (the first one after loading may part ways after a few words).
    assert answer().lower().startswith(PROMPT)
    expected = answer()
    assert expected.lower().startswith(PROMPT + ".") and len(expected) > len(PROMPT) + 20, expected

    chunks = client.chat.completions.create(model="default", seed=seed, max_tokens=tokens, messages=messages,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected

    parts = ollama.Client(host=default_server.url, timeout=120).generate(
        model="default", prompt=PROMPT, options={"seed": seed, "num_predict": tokens}, stream=True)
    assert "".join(p.response for p in parts) == expected

    llm = Llm(tmp_path, llm_entry(default_server.url, "paav", "default"))
    assert llm.prompt("paav", "-o", "seed", str(seed), "-o", "max_tokens", str(tokens)) == expected
