"""The --spec parser: round trips under hypothesis, and errors that name hook and parameter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffkit.syntax import SpecError, bind, format_spec, parse, split_args
from diffkit.params import Param, to_bool
from diffkit.technique import Technique


class Demo(Technique):
    name = "demo"
    kind = "combiner"
    params = (Param("prompt", str), Param("scale", float, 1.0), Param("n", int, 3), Param("flag", to_bool, False),
              Param("view", str, (), multiple=True))


text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.tuples(st.one_of(st.none(), st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)), text),
                       max_size=5))
def test_split_args_reads_back_what_format_spec_writes(values):
    spec = format_spec("h", values)
    name, args = parse(spec)
    assert name == "h"
    assert args == [(k, str(v).strip() if False else str(v)) for k, v in values]


@settings(max_examples=200, deadline=None)
@given(prompt=text, scale=st.floats(allow_nan=False, allow_infinity=False), n=st.integers(-10**6, 10**6),
       flag=st.booleans(), views=st.lists(st.sampled_from(["flip_v", "rot90", "negate"]), max_size=3))
def test_bind_converts_types_positional_and_keyword(prompt, scale, n, flag, views):
    spec = format_spec("demo", [(None, prompt), ("scale", repr(scale)), ("n", n), ("flag", flag)]
                       + [("view", v) for v in views])
    assert bind(Demo, parse(spec)[1]) == {"prompt": prompt, "scale": scale, "n": n, "flag": flag, "view": views}
    # positional in declaration order gives the same
    spec2 = format_spec("demo", [(None, prompt), (None, repr(scale)), (None, n)])
    assert bind(Demo, parse(spec2)[1]) == {"prompt": prompt, "scale": scale, "n": n, "flag": False, "view": []}


def test_quoted_strings_keep_commas_colons_and_equals():
    assert split_args('"an oil painting, of: people",scale=7') == [(None, "an oil painting, of: people"), ("scale", "7")]
    assert split_args("'a=b', x") == [(None, "a=b"), (None, "x")]
    assert parse("anagram:an oil painting of an old man") == ("anagram", [(None, "an oil painting of an old man")])


@pytest.mark.parametrize("spec,match", [
    ("demo:x,scale=abc", "'demo'.*'scale'.*float.*'abc'"),
    ("demo:x,bogus=1", "'demo'.*unknown parameter 'bogus'"),
    ("demo:scale=2", "'demo'.*missing required parameter 'prompt'"),
    ('demo:"unterminated', "'demo'.*unterminated quote"),
    ("demo:x,scale=1,scale=2", "'scale' given twice"),
    (":x", "no name"),
])
def test_errors_name_the_hook_and_parameter(spec, match):
    with pytest.raises(SpecError, match=match):
        name, args = parse(spec)
        bind(Demo, args)


def test_too_many_positionals_and_multiple_params_absorb_the_rest():
    class Single(Technique):
        name = "single"
        params = (Param("scale", float, 1.0),)

    with pytest.raises(SpecError, match="'single'.*too many positional.*'2'"):
        bind(Single, parse("single:1,2")[1])
    assert bind(Demo, parse("demo:x,1,2,true,a,b")[1])["view"] == ["a", "b"]
