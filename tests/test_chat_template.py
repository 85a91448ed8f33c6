"""Chat templates from model files: real ones render as llama-cpp-python renders them, hostile ones are
one sentence naming the file, within bounded time and memory."""

from __future__ import annotations

import time

import pytest
from conftest import assert_user_error, paav

from paav_cli.errors import UserError
from paav_cli.testing.tiny_gguf import CHAT_TEMPLATE as TINY_GGUF_TEMPLATE
from paav_cli.testing.tiny_llm import CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE
from paav_cli.text import chat_template
from paav_cli.text.chat_template import render_chat_template

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  a cat playing piano "},
    {"role": "assistant", "content": "A cat plays."},
    {"role": "user", "content": "a dog"},
]

# The constructs real templates (Llama 3.1, Qwen2.5, Gemma 3, Mistral) use: whitespace control,
# namespace, loop attributes, loopcontrols, tests, filters, tojson, strftime_now, raise_exception.
RICH_TEMPLATE = """
{%- set ns = namespace(system='', count=0) -%}
{{- bos_token -}}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] | trim -%}{%- endif -%}
{%- if ns.system %}<sys>{{ ns.system }}</sys>{% endif -%}
{%- for message in messages if message['role'] != 'system' -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{- raise_exception('Conversation roles must alternate user/assistant') -}}
  {%- endif -%}
  {%- set ns.count = ns.count + 1 -%}
  [{{ loop.index }}/{{ loop.length }}{{ ' last' if loop.last }}] {{ message['role'] | upper }}: {{ message['content'] | trim }}
  {%- if message.tool_calls is defined %}{{ message.tool_calls | tojson }}{% endif -%}
  {%- if loop.index > 10 %}{% break %}{% endif %}
{% endfor -%}
{{ ns.count }} turns {{ strftime_now('%Y') | length }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }}
{{ {'k': 'v', 'n': [1, 2]} | tojson }} {{ '%-5s|' % 'ab' }} {{ '{}-{}'.format('a', 'b') }} {{ 'x' * 3 }} {{ 2 ** 10 }}
{%- if add_generation_prompt %}<assistant>{% endif -%}
"""


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, TINY_GGUF_TEMPLATE,
                                      RICH_TEMPLATE])
def test_real_templates_render_as_llama_cpp_python_renders_them(template):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    ours = render_chat_template(template, MESSAGES, source="m.gguf", bos_token="<s>", eos_token="</s>")
    theirs = Jinja2ChatFormatter(template, eos_token="</s>", bos_token="<s>")(messages=MESSAGES).prompt
    assert ours == theirs and ours


HOSTILE = {
    "syntax": ("{% if %}", "syntax error on line 1"),
    "undefined": ("{{ foo.bar }}", "'foo' is undefined"),
    "security": ("{{ ''.__class__.__mro__ }}", "the sandbox refused it"),
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recurses too deeply"),
    "float overflow": ("{{ 2.0 ** 100000 }}", "OverflowError"),
    "big int": ("{{ 7 ** 100000 }}", "integer of more than"),
    "raise_exception": ("{{ raise_exception('roles must alternate') }}", "it refused the messages: roles must alternate"),
    "include": ("{% include 'other.jinja' %}", "TemplateNotFound"),
    "range": ("{% for i in range(10**7) %}{% endfor %}", "Range too big"),
    "string times 10**9": ("{{ 'x' * 10**9 }}", "over the limit"),
    "list times 10**9": ("{{ ([1] * 10**9) | length }}", "over the limit"),
    "percent width": ("{{ '%999999999s' % 'x' }}", "over the limit"),
    "format width": ("{{ '{:>999999999}'.format('x') }}", "over the limit"),
    "center": ("{{ 'x' | center(1000000000) }}", "where a size is expected"),
    "zfill": ("{{ 'x'.zfill(10**8) }}", "where a size is expected"),
    "batch fill": ("{{ [1] | batch(1000000000, 0) | list }}", "where a size is expected"),
    "concat": ("{{ ('x' * 600000) ~ ('x' * 600000) }}", "over the limit"),
    "replace": ("{{ ('x' * 100000) | replace('x', 'x' * 100) }}", "over the limit"),
    "indent": ("{{ ('\n' * 100000) | indent(1000) }}", "over the limit"),
    "join": ("{{ ','.join(['x' * 1000] * 2000) }}", "over the limit"),
    "output": ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "output over the limit"),
    "namespace doubling": (("{% set ns = namespace(x=[1]) %}{% for i in range(64) %}{% set ns.x = [ns.x, ns.x] %}"
                            "{% endfor %}{{ ns.x }}"), "over the limit"),
    "macro doubling": (("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}"
                        "{% endmacro %}{{ d('x', 40) }}"), "over the limit"),
    "block doubling": (("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set t %}{{ ns.s }}{{ ns.s }}"
                        "{% endset %}{% set ns.s = t %}{% endfor %}{{ ns.s | length }}"), "over the limit"),
    "nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
                     "ran longer than"),
    "recursive loop": ("{% for x in [1] recursive %}{{ loop([1, 2]) }}{% endfor %}", "recurses too deeply"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_templates_are_one_sentence_in_bounded_time(name, monkeypatch):
    template, fragment = HOSTILE[name]
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 1.0)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        render_chat_template(template, MESSAGES, source="/models/evil.gguf")
    message = str(err.value)
    assert time.monotonic() - start < 4.0
    assert "\n" not in message and message.startswith("the chat template in /models/evil.gguf cannot be used (")
    assert fragment in message, message


def test_a_huge_template_is_refused_before_compiling():
    with pytest.raises(UserError, match="over the limit of"):
        render_chat_template("x" * (chat_template.MAX_TEMPLATE + 1), MESSAGES, source="m.gguf")


def test_a_gguf_with_a_hostile_template_is_one_sentence_from_the_cli(tmp_path, monkeypatch):
    from paav_cli.testing import tiny_gguf

    slow = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    monkeypatch.setattr(tiny_gguf, "CHAT_TEMPLATE", slow)
    evil = tiny_gguf.build_tiny_gguf(tmp_path / "evil.gguf")
    start = time.monotonic()
    proc = paav("enhance", "-m", str(evil), "a cat", timeout=120)
    assert_user_error(proc, f"the chat template in {evil}", "ran longer than")
    assert time.monotonic() - start < 60

    monkeypatch.setattr(tiny_gguf, "CHAT_TEMPLATE", "{{ 'x' * 10**9 }}")
    big = tiny_gguf.build_tiny_gguf(tmp_path / "big.gguf")
    assert_user_error(paav("enhance", "-m", str(big), "a cat", timeout=120), f"the chat template in {big}", "over the limit")


def test_a_hugging_face_folder_with_a_hostile_template_is_one_sentence_before_training(tmp_path, monkeypatch):
    """transformers renders chat_template.jinja without bounds: paav renders it bounded first."""
    from transformers import AutoTokenizer

    from paav_cli.testing.tiny_llm import build_tiny_qwen2
    from paav_cli.train.chat import tokenize_with_mask
    from paav_cli.train.dpo import fit_prompts

    folder = build_tiny_qwen2(tmp_path / "qwen")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    good = tokenize_with_mask(tokenizer, "a cat", "A cat sits.", 512)
    assert sum(good["completion_mask"]) > 0

    monkeypatch.setattr(chat_template, "MAX_SECONDS", 1.0)
    tokenizer.chat_template = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    for run in (lambda: tokenize_with_mask(tokenizer, "a cat", "A cat sits.", 512),
                lambda: fit_prompts(tokenizer, ["a cat"], 256)):
        with pytest.raises(UserError, match="ran longer than") as err:
            run()
        assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_a_transformers_mutator_with_a_hostile_template_is_one_sentence(tmp_path, monkeypatch):
    from paav_cli.llm.hf import HFChat
    from paav_cli.testing.tiny_llm import build_tiny_qwen2

    folder = build_tiny_qwen2(tmp_path / "qwen")
    chat = HFChat(folder)
    assert chat.generate([{"role": "user", "content": "a cat"}], max_tokens=4, temperature=0)
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 1.0)
    chat.tokenizer.chat_template = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(UserError, match="ran longer than") as err:
        chat.generate([{"role": "user", "content": "a cat"}], max_tokens=4)
    assert "\n" not in str(err.value)
