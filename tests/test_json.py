"""fastamqp._jsoncodec against the stdlib json module: same bytes out, same values in.

The C engine encodes bodies with fastamqp._jsoncodec and the pure-Python engine with stdlib
json, and both must put identical bytes on the wire, so every test here is differential:
json_dumps(obj) == json.dumps(obj).encode(), and json_loads(data) returns what
json.loads(data.decode("utf-8")) returns or, where that fails, raises CodecError.

Environment:
  FASTAMQP_PUREPYTHON=1         skip (the C extension is not built in that mode)
  FASTAMQP_JSON_FUZZ_INPUTS=N   inputs for the bounded fuzz test (default 150000)
"""
import collections
import datetime
import enum
import json
import math
import os
import random
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastamqp.exceptions import CodecError

PUREPYTHON = os.environ.get("FASTAMQP_PUREPYTHON", "").strip().lower() in (
    "1", "true", "yes", "on")

try:
    from fastamqp import _jsoncodec as cjson
    IMPORT_ERROR = None
except ImportError as exc:  # judged by the fixture below: skip or fail, never silently
    cjson = None
    IMPORT_ERROR = exc


@pytest.fixture(scope="module", autouse=True)
def _require_extension():
    if cjson is not None:
        return
    if PUREPYTHON:
        pytest.skip("FASTAMQP_PUREPYTHON=1: fastamqp._jsoncodec (C extension) is not built")
    pytest.fail(f"fastamqp._jsoncodec is not importable: {IMPORT_ERROR!r}; build the C "
                f"extension, or set FASTAMQP_PUREPYTHON=1 to test pure Python only",
                pytrace=False)


# --- helpers ---------------------------------------------------------------------------

def same(a, b):
    """Deep equality that also holds for NaN and tells -0.0 from 0.0 and 1 from 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                      math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return (list(a) == list(b) and all(same(a[k], b[k]) for k in a)
                and all(type(x) is type(y) for x, y in zip(a, b)))
    return a == b


def stdlib_loads(data):
    """(True, value) or (False, exception) for json.loads(data.decode("utf-8"))."""
    try:
        return True, json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return False, exc


def check_loads(data, loads=None):
    loads = loads or cjson.json_loads
    ok, expected = stdlib_loads(data)
    try:
        got = loads(data)
    except CodecError as exc:
        assert not ok, f"stdlib accepted {data!r} -> {expected!r}, we raised {exc}"
        return False
    assert ok, f"stdlib rejected {data!r} ({expected!r}), we returned {got!r}"
    assert same(got, expected), f"{data!r}: {got!r} != {expected!r}"
    return True


def check_dumps(obj, **kwargs):
    expected = json.dumps(obj, **kwargs).encode("ascii")
    got = cjson.json_dumps(obj, **kwargs)
    assert type(got) is bytes
    assert got == expected
    return got


def raised(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        return type(exc), str(exc)
    return None


def nested_list(depth):
    x = []
    for _ in range(depth - 1):
        x = [x]
    return x


# --- strategies ------------------------------------------------------------------------

# Every code point, lone surrogates included (json escapes them as \udxxx).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
scalars = (st.none() | st.booleans()
           | st.integers() | st.integers(min_value=-10**60, max_value=10**60)
           | st.floats() | st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf,
                                              1e16, 1e-7, 5e-324, 1.7976931348623157e308])
           | any_text)
keys = (any_text | st.integers(min_value=-10**30, max_value=10**30) | st.floats()
        | st.booleans() | st.none())
json_values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=6)
                      | st.lists(children, max_size=6).map(tuple)
                      | st.dictionaries(any_text, children, max_size=6)
                      | st.dictionaries(keys, children, max_size=6)),
    max_leaves=40)


# --- dumps -----------------------------------------------------------------------------

@given(json_values)
def test_dumps_matches_stdlib(value):
    check_dumps(value)


@given(json_values)
def test_dumps_matches_stdlib_with_default(value):
    check_dumps(value, default=repr)


@given(any_text)
def test_dumps_str(text):
    check_dumps(text)
    check_dumps({text: text})


@pytest.mark.parametrize("codepoint", range(0x100))
def test_dumps_every_byte_value_at_every_word_offset(codepoint):
    ch = chr(codepoint)
    for before in range(0, 18):
        for after in (0, 1, 7, 8, 9):
            check_dumps("a" * before + ch + "b" * after)
            check_dumps("\u0100" + "a" * before + ch + "b" * after)


def test_dumps_all_code_points():
    check_dumps("".join(chr(c) for c in range(0x10000)))
    check_dumps("".join(chr(c) for c in range(0x10000, 0x110000, 97)) + "\U0010ffff")


def test_dumps_long_strings():
    check_dumps("x" * 1_000_000)
    check_dumps(("\u00e9x\"\\\n" * 10_000))
    check_dumps(("\u20ac" * 5000 + "\U0001f600" * 5000) * 3)


@pytest.mark.parametrize("number", [
    0, 1, -1, 9, 10, 99, 2**31, 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64, 10**18,
    10**19, -10**19, 10**100, -(10**100), 0.0, -0.0, 0.1, 1.0, 1e16, 1e17, 1e22, 1e-7,
    123456789.125, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan])
def test_dumps_numbers(number):
    check_dumps(number)
    check_dumps([number])
    check_dumps({number: number})


def test_dumps_constants_and_keys():
    check_dumps([None, True, False, [], {}, (), [[]], [{}], {"": ""}])
    check_dumps({None: 1, True: 2, False: 3, 1.5: 4, -7: 5, math.nan: 6, math.inf: 7,
                 -math.inf: 8, 10**40: 9, "s": 10})


def test_dumps_default_hook():
    value = {"when": datetime.datetime(2026, 11, 23, 21, 0, 0), "tags": {"b", "a"}}
    assert check_dumps(value, default=str).startswith(b'{"when": "2026-11-23 21:00:00"')
    check_dumps({"tags": frozenset([3, 1, 2])}, default=sorted)
    check_dumps([datetime.date(2026, 1, 1)], default=lambda o: {"date": o.isoformat()})


def test_dumps_errors_match_stdlib():
    circular = []
    circular.append(circular)
    circular_dict = {}
    circular_dict["me"] = circular_dict
    selfish = object()
    cases = [
        (datetime.datetime(2026, 1, 1), None),       # no default: TypeError
        ({"s": {1, 2}}, None),
        ({(1, 2): "tuple key"}, None),                 # TypeError: keys must be ...
        (circular, None),                              # ValueError: Circular reference
        (circular_dict, None),
        ({"x": selfish}, lambda o: o),                 # default returns itself: circular
        ([10 ** 5000], None),                          # int digit limit (ValueError)
        ({10 ** 5000: 1}, None),
        ([object()], lambda o: 1 / 0),                 # default raises
    ]
    for obj, default in cases:
        expected = raised(json.dumps, obj, default=default)
        assert expected is not None
        assert raised(cjson.json_dumps, obj, default) == expected


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


class Ratio(float):
    def __repr__(self):
        return "Ratio!"


class Name(str):
    def __str__(self):
        return "other"


class MyList(list):
    pass


class MyDict(dict):
    pass


def test_dumps_subclasses_fall_back_to_stdlib():
    Point = collections.namedtuple("Point", "x y")
    cases = [
        {"colour": Colour.RED, Colour.GREEN: [Colour.RED]},
        collections.OrderedDict([("b", 1), ("a", 2)]),
        {"ordered": collections.OrderedDict(z=1)},
        [Ratio(1.5), {Ratio(2.5): 1}],
        [Name("n\u00e9"), {Name("k"): Name("v")}],
        MyList([1, MyDict(a=MyList([2]))]),
        collections.defaultdict(list, a=[1]),
        Point(1, 2),
        [True, 1, Colour.RED, 1.0],
    ]
    for obj in cases:
        check_dumps(obj)
        check_dumps(obj, default=str)


def test_dumps_shared_references_are_not_circular():
    shared = [1, {"a": 2}]
    check_dumps([shared, shared, {"x": shared, "y": shared}])


def test_dumps_deep_nesting():
    for depth in (1, 2, 150, 199, 200, 201, 300, 600):
        check_dumps(nested_list(depth))
        d = {}
        for _ in range(depth):
            d = {"k": d}
        check_dumps(d)
    # Deeper than the interpreter allows: the stdlib's RecursionError, not a crash.
    deep = nested_list(100_000)
    expected = raised(json.dumps, deep)
    assert expected is not None and expected[0] is RecursionError
    assert raised(cjson.json_dumps, deep)[0] is RecursionError


def test_dumps_returns_ascii_bytes_for_oslo_request():
    body = {"request": {"method": "echo", "args": {"data": "x" * 900}, "version": "1.0"},
            "context": {"user": "u", "project_id": "pppppppppp",
                        "request_id": "req-0b9a7e8c-7f7b-4e4e-9d4c-1f2e3d4c5b6a"}}
    out = check_dumps(body)
    assert out.isascii()


# --- loads -----------------------------------------------------------------------------

@given(json_values)
def test_loads_matches_stdlib(value):
    check_loads(json.dumps(value).encode())
    check_loads(json.dumps(value, separators=(",", ":")).encode())
    check_loads(json.dumps(value, indent="\t").encode())
    text = json.dumps(value, ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")   # invalid UTF-8: both must fail
    check_loads(data)


@given(st.binary(max_size=64))
def test_loads_random_bytes(data):
    check_loads(data)


@given(st.text(st.sampled_from('{}[],:"\\u0123456789abcdefABCDEF.eE+-ntrufalsNIy '
                               '\t\n\r\x00\x1f\x7f\u00e9\ud83d\ude00\U0001f600'),
               max_size=40))
def test_loads_json_alphabet_soup(text):
    check_loads(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("byte", range(0x100))
def test_loads_every_byte_value_in_strings_at_every_word_offset(byte):
    for before in range(0, 18):
        for after in (0, 1, 7, 8, 9):
            body = b"a" * before + bytes([byte]) + b"b" * after
            check_loads(b'"' + body + b'"')
            check_loads(b'"\xc3\xa9' + body + b'\\n"')
            check_loads(b'["\\u00e9' + body + b'", 1]')


@pytest.mark.parametrize("text", [
    '"\\ud83d\\ude00"', '"\\ud83d"', '"\\ude00"', '"\\ude00\\ud83d"', '"\\ud83d\\ud83d"',
    '"\\ud83d\\u0041"', '"\\ud83d\\ude00\\ude00"', '"\\uD83D\\uDE00"', '"\\ud83dx"',
    '"\\ud83d\\"', '"\\ud83d\\n"', '"\\u0000"', '"\\u00e9\\u20ac\\uffff"', '"\\ud83d\\ude0"',
    '"\\ud83d\\u12"', '"\\ud83d\\uzzzz"', '"\\u12"', '"\\u12', '"\\', '"\\/\\b\\f\\n\\r\\t"',
    '"\\a"', '"\\U0001f600"', '"\\x41"', '"a\\\\"', '"a\\\\\\""',
])
def test_loads_escapes(text):
    check_loads(text.encode())


@pytest.mark.parametrize("text", [
    "0", "-0", "1", "-1", "01", "-01", "00", "1.", ".5", "-.5", "1.5", "-0.0", "1e5",
    "1E5", "1e+5", "1e-5", "1.5e3", "1e", "1e+", "1.e3", "--1", "+1", "-", "1.5.5",
    "999999999999999999", "-999999999999999999", "1000000000000000000",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "99999999999999999999999999999999",
    "0.1", "0.30000000000000004", "2.2250738585072014e-308", "4.9e-324", "1e-400",
    "1e400", "-1e400", "1.7976931348623157e308", "1.7976931348623159e308",
    "3.141592653589793238462643383279502884197169399375105820974944592307816406286",
    "NaN", "Infinity", "-Infinity", "-NaN", "+Infinity", "nan", "inf", "Infinit",
    "[NaN, Infinity, -Infinity]", "true", "false", "null", "True", "nul", "truex",
    "1" * 4300, "1" * 4301, "-" + "1" * 4301, "1." + "1" * 5000,
])
def test_loads_numbers_and_literals(text):
    check_loads(text.encode())
    check_loads(f"[{text}]".encode())
    check_loads(f' {{"k": {text} }} '.encode())


@pytest.mark.parametrize("data", [
    b"", b" ", b"\t\n\r ", b"[", b"]", b"{", b"}", b"[1,]", b"[,1]", b"[1 2]", b"{,}",
    b'{"a":1,}', b'{"a" 1}', b'{"a":}', b'{1: 2}', b"{'a': 1}", b'{"a": 1 "b": 2}',
    b"[1] [2]", b"[1]x", b"1 2", b'"abc', b'"a\x00b"', b'"a\nb"', b'"a\x1fb"', b'"a\x7fb"',
    b" [1 , 2 ] ", b'\xef\xbb\xbf[1]', b"\x00", b"[1]\x00", b"\xff", b'"\xc3"', b'"\xc3\x28"',
    b'"\xe0\x80\x80"', b'"\xed\xa0\x80"', b'"\xed\x9f\xbf"', b'"\xf4\x90\x80\x80"',
    b'"\xf4\x8f\xbf\xbf"', b'"\xf0\x8f\xbf\xbf"', b'"\xc0\xaf"', b'"\xf8\x88\x80\x80\x80"',
    b'[1, "\xff"', b'[1 \xff]', b'{"a": 1, "a": 2, "b": 3, "a": 4}', b'{"": {"": []}}',
    b"\x0c[1]", b"[1]\x0b", b"\xc2\xa0[1]", b"[\xe2\x80\x8b1]",
])
def test_loads_edge_cases(data):
    check_loads(data)


def test_loads_duplicate_keys_last_wins_first_position():
    got = cjson.json_loads(b'{"a": 1, "b": 2, "a": 3}')
    assert list(got.items()) == [("a", 3), ("b", 2)]


def test_loads_special_floats_are_the_stdlib_objects():
    assert cjson.json_loads(b"NaN") is json.loads("NaN")
    assert cjson.json_loads(b"[NaN]") == json.loads("[NaN]")   # same object: equal
    assert cjson.json_loads(b"Infinity") is json.loads("Infinity")
    assert cjson.json_loads(b"-Infinity") is json.loads("-Infinity")


def test_loads_accepts_bytes_like():
    assert cjson.json_loads(bytearray(b'{"a": [1]}')) == {"a": [1]}
    assert cjson.json_loads(memoryview(b'[true]')) == [True]


def test_loads_error_messages_name_cause_and_offset():
    with pytest.raises(CodecError, match=r"not valid JSON: expecting ',' or '}' at offset 9"):
        cjson.json_loads(b'{"a": 1  x}')
    with pytest.raises(CodecError, match=r"not valid JSON: expecting value at offset 0"):
        cjson.json_loads(b"")
    with pytest.raises(CodecError, match=r"not valid JSON: extra data at offset 4"):
        cjson.json_loads(b"[1] 2")
    with pytest.raises(CodecError, match=r"not valid UTF-8: invalid start byte at offset 7"):
        cjson.json_loads(b'{"a": "\xff"}')
    # json.loads decodes first, so bad UTF-8 anywhere wins over an earlier syntax error.
    with pytest.raises(CodecError, match=r"not valid UTF-8: .* at offset 5"):
        cjson.json_loads(b'[1 2 \xc3]')
    with pytest.raises(CodecError, match=r"control character .* at offset 3"):
        cjson.json_loads(b'"ab\ncd"')
    with pytest.raises(CodecError, match=r"nesting deeper than 1000 levels"):
        cjson.json_loads(b"[" * 1001 + b"]" * 1001)
    assert isinstance(CodecError("x"), ValueError)


def test_loads_deep_nesting():
    for depth in (1, 2, 31, 32, 33, 64, 65, 500, 1000):
        data = b"[" * depth + b"]" * depth
        if depth <= 200:   # json.loads (and same()) hit the recursion limit deeper down
            check_loads(data)
        got = cjson.json_loads(data)
        for _ in range(depth - 1):
            assert type(got) is list and len(got) == 1
            got = got[0]
        assert got == []
        obj = b'{"k":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
        got = cjson.json_loads(obj)
        for _ in range(depth - 1):
            got = got["k"]
        assert got == {}
    for depth in (1001, 100_000, 10_000_000):
        with pytest.raises(CodecError):
            cjson.json_loads(b"[" * depth)
        with pytest.raises(CodecError):
            cjson.json_loads(b'{"a":' * min(depth, 100_000))


def test_loads_does_not_read_past_size():
    # _json_loads_exact copies into an allocation of exactly len(data) bytes (bytes
    # objects carry a trailing NUL); valgrind/ASan runs of this test catch over-reads.
    for data in [b"", b"1", b"-", b"12", b"1.", b"1e", b"1e-", b"t", b"tru", b"n", b"f",
                 b"N", b"-I", b"-Infinit", b"Infinit", b'"', b'"a', b'"\\', b'"\\u',
                 b'"\\u12', b'"\\ud800\\u', b'"\\ud800\\udc0', b'"\xc3', b'"\xe2\x82',
                 b'"\xf0\x9f\x98', b"[", b"[1", b"[1,", b"{", b'{"a"', b'{"a":', b'{"a":1',
                 b'{"a":1,', b" ", b"[1] ", b"1" * 30, b"1.5" + b"0" * 70]:
        for cut in range(len(data) + 1):
            check_loads(data[:cut], loads=cjson._json_loads_exact)


def test_loads_large_documents():
    value = {"s" + str(i): ["x" * 300, "\u00e9\u20ac\U0001f600" * 50, i, i / 7, None]
             for i in range(2000)}
    check_loads(json.dumps(value).encode())
    check_loads(json.dumps(value, ensure_ascii=False).encode())
    check_loads(json.dumps("\\" * 100_000 + "\u20ac" * 100_000).encode())


def test_roundtrip_oslo_request():
    body = {"request": {"method": "echo", "args": {"data": "x" * 900}, "version": "1.0"},
            "context": {"user": "u", "project_id": "pppppppppp",
                        "request_id": "req-0b9a7e8c-7f7b-4e4e-9d4c-1f2e3d4c5b6a"}}
    assert cjson.json_loads(cjson.json_dumps(body)) == body


# --- bounded fuzzing -------------------------------------------------------------------

FUZZ_INPUTS = int(os.environ.get("FASTAMQP_JSON_FUZZ_INPUTS", "150000"))
INTERESTING = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b" ", b"\x00", b"\x1f",
               b"\x7f", b"\x80", b"\xbf", b"\xc0", b"\xc3", b"\xe0", b"\xed", b"\xef",
               b"\xf0", b"\xf4", b"\xff", b"0", b"9", b"-", b"+", b".", b"e", b"u", b"n",
               b"t", b"f", b"N", b"I"]
SNIPPETS = [b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\\u00e9", b"\\n", b"NaN",
            b"-Infinity", b"Infinity", b"1e999", b"-0", b"0.5e-3", b"null", b"true",
            b'"k":', b"[]", b"{}", b'""', b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", b"\xc3\xa9",
            b"12345678901234567890", b" \t\r\n"]


def _random_value(rng, depth=0):
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        return rng.choice([
            None, True, False, rng.randint(-10**6, 10**6), rng.randint(-10**25, 10**25),
            rng.uniform(-1e6, 1e6), rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e300]),
            "".join(rng.choice("ab\"\\\n\u00e9\u20ac\U0001f600 \x01") for _ in
                    range(rng.randint(0, 12))),
            "x" * rng.randint(0, 40)])
    if roll < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(["a", "b", "c", "\u00e9", "k" * 5, ""]): _random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


def _corpus(rng, size):
    docs = []
    for _ in range(size):
        value = _random_value(rng)
        docs.append(json.dumps(value).encode())
        docs.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        docs.append(json.dumps(value, indent=rng.choice([1, "\t", "\r\n"])).encode())
    return docs


def _mutate(rng, docs):
    data = bytearray(rng.choice(docs))
    for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
        op = rng.randrange(8)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:                       # bit flip
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and data:                     # byte replacement
            pos = rng.randrange(len(data))
            data[pos:pos + 1] = rng.choice(INTERESTING)
        elif op == 2:                              # truncation
            del data[pos:]
        elif op == 3:                              # splice with another document
            other = rng.choice(docs)
            data[pos:] = other[rng.randrange(len(other) + 1):]
        elif op == 4:                              # insertion
            data[pos:pos] = rng.choice(SNIPPETS + INTERESTING)
        elif op == 5 and data:                     # deletion of a range
            del data[pos:pos + rng.randint(1, 8)]
        elif op == 6 and data:                     # duplication of a range
            end = min(len(data), pos + rng.randint(1, 16))
            data[pos:pos] = data[pos:end]
        else:                                      # random bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(data)


@pytest.mark.fuzz
def test_fuzz_loads_against_stdlib():
    rng = random.Random(0x5EED_150)
    docs = _corpus(rng, 300)
    started = time.monotonic()
    accepted = rejected = 0
    for i in range(FUZZ_INPUTS):
        if i % 10 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 24)))
        elif i % 10 == 1:
            data = rng.choice(docs)
        else:
            data = _mutate(rng, docs)
        if check_loads(data):
            accepted += 1
        else:
            rejected += 1
    elapsed = time.monotonic() - started
    print(f"fuzz: {FUZZ_INPUTS} inputs, {accepted} accepted, {rejected} rejected, "
          f"{elapsed:.1f} s", file=sys.stderr)
    # Both outcomes must have been exercised, or the mutator is broken.
    assert accepted > FUZZ_INPUTS // 20 and rejected > FUZZ_INPUTS // 4
