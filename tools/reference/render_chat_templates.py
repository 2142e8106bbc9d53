#!/usr/bin/env python3
"""Reference renderings for our Jinja interpreter (runtime/jinja.h), made with jinja2 exactly as
Hugging Face transformers' apply_chat_template renders chat templates: an
ImmutableSandboxedEnvironment with trim_blocks=True and lstrip_blocks=True, the loop controls
extension, transformers' tojson (json.dumps, ensure_ascii=False), raise_exception and
strftime_now globals, and the variables messages, tools=None, documents=None,
add_generation_prompt, bos_token and eos_token.

  chats:    every template in tests/data/chat_templates/models.json on every conversation below,
            with and without the generation prompt;
  features: small templates, one construct each, with their variables.

strftime_now reads a fixed time (FIXED_NOW) so that date-dependent templates (Llama 3.2) render
the same on both sides. A template that raises records the error's message instead of output.

Usage: render_chat_templates.py [--out FILE]  (default: tests/data/chat_templates/expected.json)
"""
import argparse
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime(2024, 9, 5, 14, 30, 0)

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How do I say thank you?"},
    ],
    "whitespace": [{"role": "user", "content": "  padded question with a trailing newline\n"}],
    "unicode": [
        {"role": "system", "content": "Ünïcödé system — “quotes”, 'single' and \"double\""},
        {"role": "user", "content": "日本語のテキスト {{ not a tag }} {% neither %}"},
        {"role": "assistant", "content": " 答え "},
        {"role": "user", "content": "Ещё вопрос?\tTab"},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Question?"},
        {"role": "assistant", "content": "Answer."},
    ],
}

# (name, template, variables): one construct each, as chat templates use them.
FEATURES = [
    ("text_only", "plain text\n", {}),
    ("output", "{{ 'a' }}{{ 1 }}{{ 1.5 }}{{ none }}{{ true }}{{ false }}{{ undefined_name }}|", {}),
    ("float_repr", "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e-5 }} {{ 10 / 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }}", {}),
    ("whitespace_control", "a  {{- ' b ' -}}  c\n  {%- if true -%}  d  {%- endif -%}\n  e", {}),
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter\n", {}),
    ("lstrip_blocks", "line\n    {% if true %}\n    indented\n    {% endif %}\n  {# comment #}\nend", {}),
    ("plus_disables_lstrip", "x\n    {%+ if true %}kept{% endif %}", {}),
    ("comment_strip", "a {#- c -#} b\n{# trailing #}\nc", {}),
    ("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("for_loop_vars", "{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }};{% endfor %}", {"xs": ["a", "b", "c"]}),
    ("for_else", "{% for x in [] %}item{% else %}empty{% endfor %}", {}),
    ("for_filter", "{% for x in xs if x > 1 %}{{ x }}{{ loop.length }}{% endfor %}", {"xs": [1, 2, 3]}),
    ("for_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d | items %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("for_dict_and_string", "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'héllo' %}{{ c }}.{% endfor %}", {"d": {"x": 1, "y": 2}}),
    ("loop_controls", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("loop_scope", "{% set x = 'outer' %}{% for i in [1] %}{% set x = 'inner' %}{{ x }}{% endfor %} {{ x }}", {}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for m in ms %}{% if m.role == 'user' %}{% set ns.count = ns.count + 1 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }}", {"ms": [{"role": "user"}, {"role": "assistant"}, {"role": "user"}]}),
    ("set_tuple_and_block", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set block %}x{{ a }}y{% endset %}[{{ block }}]", {}),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}", {}),
    ("filters_text", "{{ '  x y  ' | trim }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'hello world' | title }}|{{ 'hello' | capitalize }}|{{ 'a-b' | replace('-', '+') }}|{{ 'abc' | reverse }}", {}),
    ("filters_sequences", "{{ xs | length }} {{ xs | first }} {{ xs | last }} {{ xs | join(', ') }} {{ xs | list }} {{ 'abc' | list }} {{ xs | reverse | join }} {{ [1, 2, 3] | sum }}", {"xs": ["p", "q", "r"]}),
    ("filters_default", "{{ missing | default('dflt') }} {{ '' | default('empty', true) }} {{ 'set' | d('no') }} {{ none | default('kept') }}", {}),
    ("filter_tojson", "{{ v | tojson }}\n{{ v | tojson(indent=2) }}\n{{ 'é\"\\n' | tojson }} {{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}", {"v": {"name": "f", "args": [1, 2.5, None, True, "s"], "nested": {}, "empty": []}}),
    ("filter_string_and_numbers", "{{ 3 | string }}{{ [1] | string }}{{ '42' | int + 1 }} {{ '2.5' | float }} {{ 'x' | int }} {{ -3 | abs }}", {}),
    ("filter_select", "{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ ms | rejectattr('role', 'eq', 'user') | list | length }}|{{ [0, 1, 2, none] | select | list }}|{{ ['a', 'b'] | reject('equalto', 'a') | list }}", {"ms": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}]}),
    ("filter_map_and_dictsort", "{{ ['a', 'b'] | map('upper') | join }} {% for k, v in {'b': 2, 'a': 1} | dictsort %}{{ k }}{{ v }}{% endfor %}", {}),
    ("filter_indent", "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(4, true) }}|{{ 'x\\n\\ny' | indent(2, blank=true) }}", {}),
    ("filter_block", "{% filter upper %}shout {{ 'this' }}{% endfilter %}", {}),
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ none is none }}{{ 's' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 's' is iterable }}{{ 3 is number }}{{ 3 is integer }}{{ 3.0 is float }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ 'a' is equalto 'a' }}{{ 1 is not none }}{{ true is boolean }}{{ 'ab' is lower }}", {"x": 1}),
    ("string_methods", "{{ '  s  '.strip() }}|{{ 'xxsxx'.strip('x') }}|{{ ' s '.lstrip() }}|{{ ' s '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'hello world'.title() }}|{{ 'ABC'.lower() }}{{ 'abc'.upper() }}|{{ '-'.join(['a', 'b']) }}|{{ 'banana'.count('a') }}{{ 'banana'.find('n') }}", {}),
    ("dict_methods", "{{ d.get('a') }} {{ d.get('z', 'none') }} {{ d.get('z') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d['a'] }} {{ d.a }} {{ d.missing is defined }}", {"d": {"a": 1, "b": [2]}}),
    ("slicing", "{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[-1] }} {{ 'héllo'[1:3] }} {{ 'abcdef'[::2] }} {{ xs[5] is defined }} {{ xs[0:10:3] }}", {"xs": [1, 2, 3, 4]}),
    ("in_operator", "{{ 'a' in 'cat' }}{{ 2 in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 'z' not in 'cat' }}{{ 'x' in missing }}", {}),
    ("concat_and_math", "{{ 'a' ~ 1 ~ none ~ missing }} {{ 'ab' + 'cd' }} {{ [1] + [2] }} {{ 'ab' * 2 }} {{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 ** 3 ** 2 }}", {}),
    ("comparisons", "{{ 1 < 2 }}{{ 2 <= 2 }}{{ 3 > 4 }}{{ 'a' < 'b' }}{{ 1 == 1.0 }}{{ 1 != 2 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ [1, 2] == [1, 2] }}{{ {'a': 1} == {'a': 1} }}{{ true == 1 }}", {}),
    ("boolean_ops", "{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ none or [] }} {{ not 0 }} {{ not 'x' }} {{ 1 if false }} {{ 'y' if 0 else 'n' }} {{ not x is defined and true }}", {}),
    ("literals", "{{ [1, 'two', [3], {'k': 'v'}, none, true] }} {{ {'a': 1, 'b': [1, 2]} }} {{ \"it's\" }} {{ 'say \"hi\"' }} {{ 'tab\\there' }}", {}),
    ("repr_strings", "{{ ['it\\'s', 'plain', \"both ' and \\\"\", 'new\\nline', 'back\\\\slash'] }}", {}),
    ("adjacent_strings_and_escapes", "{{ 'a' 'b' \"c\" }} {{ '\\u00e9\\x41\\101' }} {{ 'unknown \\q escape' }}", {}),
    ("messages_like", "{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n        {{- '<<' + message['content'] | trim + '>>' }}\n    {%- else %}\n        {{- message.role + ': ' + message.content + '\\n' }}\n    {%- endif %}\n{%- endfor %}", {"messages": [{"role": "system", "content": " sys "}, {"role": "user", "content": "hi"}]}),
    ("nested_loops", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("loop_previtem_and_cycle", "{% for x in [1, 2, 3] %}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }}{{ loop.cycle('o', 'e') }} {% endfor %}", {}),
    ("range_and_dict", "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ dict(a=1, b='x') }}", {}),
    ("strftime_now", "{{ strftime_now('%d %b %Y') }} {{ strftime_now('%Y-%m-%d %H:%M') }}", {}),
    ("raise_exception", "before{{ raise_exception('Conversation roles must alternate') }}after", {}),
    ("undefined_attribute_error", "{{ missing.attr }}", {}),
    ("sandbox_forbids_append", "{% set xs = [] %}{{ xs.append(1) }}", {}),
]


def make_environment():
    """The environment transformers' _compile_jinja_template builds."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return FIXED_NOW.strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, variables):
    try:
        return {"output": env.from_string(source).render(**variables)}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e), "error_type": type(e).__name__}


def main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    data = os.path.join(repo, "tests", "data", "chat_templates")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(data, "expected.json"))
    args = parser.parse_args()

    env = make_environment()
    with open(os.path.join(data, "models.json"), encoding="utf-8") as f:
        models = json.load(f)
    chats = []
    for model in models:
        with open(os.path.join(data, model["template"]), encoding="utf-8", newline="") as f:
            source = f.read()
        special = {k: model[k] for k in ("bos_token", "eos_token") if k in model}
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (False, True):
                variables = dict(messages=messages, tools=None, documents=None,
                                 add_generation_prompt=add_generation_prompt, **special)
                case = {"template": model["name"], "conversation": conversation,
                        "add_generation_prompt": add_generation_prompt, "messages": messages}
                case.update(render(env, source, variables))
                chats.append(case)
    features = []
    for name, source, variables in FEATURES:
        case = {"name": name, "template": source, "variables": variables}
        case.update(render(env, source, variables))
        features.append(case)
    result = {"generator": "tools/reference/render_chat_templates.py", "jinja2": jinja2.__version__,
              "fixed_now": FIXED_NOW.isoformat(), "chats": chats, "features": features}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(chats)} chat renderings and {len(features)} feature renderings -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
