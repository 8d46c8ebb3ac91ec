"""Bodies an internet client may send, for the fuzz tests of every HTTP endpoint.

Each strategy starts from a valid body of the endpoint and breaks it the ways review
found breaking something: nesting thousands deep, NaN and Infinity literals, control
characters in ids, more list items than the contract takes, strings over their limit,
values of the wrong type, and bytes that are not JSON at all.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
WRONG_TYPES = st.integers() | st.booleans() | st.dictionaries(st.text(max_size=4), JSON_VALUES, min_size=1, max_size=3)
CONTROL_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1, max_size=5)


def _set(body: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def hostile_bodies(valid: dict[str, Any], *, id_fields: list[list[str | int]],
                   list_fields: list[tuple[list[str | int], Any]], number_fields: list[list[str | int]]
                   ) -> st.SearchStrategy[bytes]:
    """Bytes to POST. `id_fields`: paths to strings that become ids or labels;
    `list_fields`: (path, one valid item) of lists with a maximum length;
    `number_fields`: paths to numbers."""
    text = json.dumps(valid)
    typed_paths = [*id_fields, *(p for p, _ in list_fields)]  # where any non-string, non-list is wrong
    strategies: list[st.SearchStrategy[str]] = [
        st.integers(50, 50_000).map(nested),  # a bare deeply nested document
        st.integers(50, 5_000).map(lambda d: text[:-1] + f', "zz": {nested(d)}}}'),  # deep inside a body
        st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(lambda c: text[:-1] + f', "n": {c}}}'),
        st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
        JSON_VALUES.map(json.dumps),
    ]
    if typed_paths:
        strategies.append(st.builds(lambda path, value: json.dumps(_set(valid, path, value)), st.sampled_from(typed_paths),
                                    WRONG_TYPES))
    if id_fields:
        strategies.append(st.builds(lambda path, junk: json.dumps(_set(valid, path, f"id{junk}x")),
                                    st.sampled_from(id_fields), CONTROL_TEXT))
        strategies.append(st.builds(lambda path: json.dumps(_set(valid, path, "x" * 100_000)),
                                    st.sampled_from(id_fields)))
    if list_fields:
        strategies.append(st.builds(lambda field, n: json.dumps(_set(valid, field[0], [field[1]] * n)),
                                    st.sampled_from(list_fields), st.integers(501, 3000)))
    if number_fields:
        strategies.append(st.builds(lambda path, literal: _with_literal(valid, path, literal),
                                    st.sampled_from(number_fields),
                                    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])))
    return st.one_of(strategies).map(lambda s: s.encode("utf-8", "surrogatepass"))


def _with_literal(valid: dict[str, Any], path: list[str | int], literal: str) -> str:
    """The valid body with the number at `path` replaced by a raw JSON literal."""
    marker = "__literal_marker__"
    return json.dumps(_set(valid, path, marker)).replace(f'"{marker}"', literal)
