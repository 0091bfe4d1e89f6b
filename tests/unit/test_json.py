"""JSON bodies: both codecs against the stdlib json module, by value.

Bodies are written by orjson and read by msgspec (fastamqp.serializers), with the stdlib
taking over for what they do not take its way. The contract is not the stdlib's bytes
but its values (REFERENCE §3.8: UTF-8 JSON text in an amqp-value string):

* what either codec writes, json.loads (the original driver) reads as json.loads reads
  jsonutils.dumps' text (json.dumps with default=to_primitive) of the same data, and
  the codecs' own decoders read it the same way;
* what json.dumps writes, in any of its styles, both codecs read as json.loads does;
  what json.loads refuses, they refuse with CodecError.

The encode tests go through the codecs (the ``codec`` fixture): the C engine calls the
libraries itself, with its own NaN check. Equality is ``same()``: NaN equals NaN, -0.0
is not 0.0, 1 is not 1.0 and key order counts.

Environment:
  FASTAMQP_JSON_FUZZ_INPUTS=N   inputs for the bounded fuzz test (default 150000)
  FASTAMQP_JSON=stdlib          the stdlib both ways (the same contract holds; the tests
                                of what only the libraries do are skipped)
"""
import collections
import dataclasses
import datetime
import enum
import json
import math
import os
import pickle
import random
import subprocess
import sys
import time
import uuid

import proton
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastamqp import engine, serializers
from fastamqp.exceptions import CodecError


STDLIB_FORCED = os.environ.get("FASTAMQP_JSON", "").strip().lower() == "stdlib"
libraries_only = pytest.mark.skipif(STDLIB_FORCED, reason="FASTAMQP_JSON=stdlib")


# --- helpers ---------------------------------------------------------------------------

def same(a, b):
    """Deep equality that also holds for NaN and tells -0.0 from 0.0 and 1 from 1.0.

    Iterative: the deep-nesting tests compare values deeper than the recursion limit.
    """
    pending = [(a, b)]
    while pending:
        a, b = pending.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, float):
            if not ((math.isnan(a) and math.isnan(b))
                    or (a == b and math.copysign(1, a) == math.copysign(1, b))):
                return False
        elif isinstance(a, list):
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b))
        elif isinstance(a, dict):
            if list(a) != list(b) or any(type(x) is not type(y) for x, y in zip(a, b)):
                return False
            pending.extend((a[k], b[k]) for k in a)
        elif a != b:
            return False
    return True


def jsonutils_value(value):
    """What the original driver's receiver got for ``value``: json.loads of
    jsonutils.dumps (json.dumps with to_primitive as the default hook)."""
    return json.loads(json.dumps(value, default=serializers.to_primitive))


def wire_text(codec, value):
    """The JSON text of a reply carrying ``value``, as Proton (the original) reads it."""
    msg = proton.Message()
    msg.decode(codec.encode_reply("reply/addr", "cid", response=value))
    assert type(msg.body) is str   # an amqp-value string (REFERENCE §3.8)
    return msg.body


def check_encodes(codec, value):
    """``value`` travels as jsonutils.dumps' text would: the original driver and our
    decoder both read the stdlib's value."""
    expected = jsonutils_value(value)
    text = wire_text(codec, value)
    assert same(json.loads(text)["response"], expected), (value, text)
    decoded = codec.decode(codec.encode_reply("reply/addr", "cid", response=value))
    assert same(decoded.response, expected), (value, decoded.response)
    return text


def stdlib_loads(data):
    """(True, value) or (False, exception) for json.loads(data.decode("utf-8"))."""
    try:
        return True, json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return False, exc


def check_loads(data, loads=serializers.loads_json):
    ok, expected = stdlib_loads(data)
    try:
        got = loads(data)
    except CodecError as exc:
        assert not ok, f"stdlib accepted {data!r} -> {expected!r}, we raised {exc}"
        return False
    assert ok, f"stdlib rejected {data!r} ({expected!r}), we returned {got!r}"
    assert same(got, expected), f"{data!r}: {got!r} != {expected!r}"
    return True


def amqp_value_message(text, **properties):
    """A reply whose amqp-value string is ``text``, as any sender (the original) puts it."""
    msg = proton.Message(inferred=True)
    msg.body = text
    msg.address = "reply/addr"
    msg.correlation_id = properties.get("correlation_id", "cid")
    return bytes(msg.encode())


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
                                              1e16, 1e-7, 5e-324, 1.7976931348623157e308,
                                              2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63,
                                              -2**63 - 1])
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


# --- the libraries ---------------------------------------------------------------------

@libraries_only
def test_libraries_are_in_use():
    """orjson and msgspec are dependencies: a broken install must not fall back to the
    stdlib unnoticed (FASTAMQP_JSON=stdlib chooses the stdlib on purpose)."""
    import msgspec
    import orjson
    assert serializers.ORJSON_DUMPS is orjson.dumps
    assert serializers.MSGSPEC_LOADS is not None
    assert serializers.json_libraries() == (f"dumps: orjson {orjson.__version__}, "
                                            f"loads: msgspec {msgspec.__version__}")


# --- encoding --------------------------------------------------------------------------

@given(json_values)
def test_encodes_what_the_stdlib_means(codec, value):
    check_encodes(codec, value)


@given(json_values)
def test_c_and_python_write_the_same_bytes(both_codecs, value):
    """Same libraries, same fallbacks: the C engine's NaN check in C agrees with
    serializers.has_nonfinite_float on every value."""
    c, py = both_codecs
    assert c.encode_reply("r", "c", response=value) == py.encode_reply("r", "c",
                                                                        response=value)


@pytest.mark.parametrize("value", [
    # orjson writes NaN and the infinities as null; the stdlib as NaN/Infinity
    math.nan, math.inf, -math.inf, [math.nan], [None, math.inf], {"a": None, "b": -math.inf},
    (None, (1.5, [{"x": [math.nan]}])), [None, [None, {"k": [1.0, 2.5, math.inf]}]],
    # orjson refuses: integers beyond 64 bits, non-str keys, lone surrogates
    2**64, -2**63 - 1, [10**40, {"a": -10**30}], {True: 1, None: 2, 1.5: 3, -7: 4, "s": 5},
    {math.nan: 1, math.inf: 2}, {"a": {10**40: 1}}, "\ud800", {"\udfff": ["x\ud83d"]},
    # just inside what orjson takes
    2**64 - 1, -2**63, [None, 0.0, -0.0, 5e-324, 1.7976931348623157e308],
])
def test_values_orjson_writes_otherwise_go_through_the_stdlib(codec, value):
    check_encodes(codec, value)


def test_nan_next_to_none_keeps_both(codec):
    text = check_encodes(codec, {"none": None, "nan": math.nan, "inf": [math.inf]})
    assert "NaN" in text and "Infinity" in text and "null" in text


@libraries_only
def test_plain_bodies_are_compact_utf8(codec):
    """orjson's text: no spaces, non-ASCII as UTF-8 (json.dumps escaped it)."""
    text = wire_text(codec, {"a": [1, "é€😀", None]})
    assert text == '{"response":{"a":[1,"é€😀",null]}}'


def test_stdlib_fallback_text_is_jsonutils(codec):
    """Where the stdlib writes the body, it is exactly jsonutils.dumps' text."""
    value = {"big": 2**70, "when": datetime.datetime(2026, 11, 23, 21, 0, 0)}
    text = wire_text(codec, value)
    assert text == json.dumps({"response": value}, default=serializers.to_primitive)


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


class Flavour(str, enum.Enum):
    SMALL = "m1.small"


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


class Masked(dict):
    """A dict whose items() is not its storage: the stdlib (and so jsonutils) asks
    items(), orjson would read the storage."""

    def items(self):
        return [("shown", 1)]


class Instance:
    """What to_primitive(convert_instances=True) turns into its __dict__."""

    def __init__(self):
        self.name = "vm1"
        self.when = datetime.date(2026, 1, 2)


@dataclasses.dataclass
class Flavor:
    vcpus: int
    ram: float


def test_what_needs_to_primitive_is_jsonutils(codec):
    """datetime, set, UUID, Decimal, bytes, instances: as jsonutils.to_primitive writes
    them (orjson would write datetimes and dataclasses its own way)."""
    import decimal
    ordered = collections.OrderedDict([("b", 1), ("a", 2)])
    ordered.move_to_end("b")
    Point = collections.namedtuple("Point", "x y")
    for value in [
        {"when": datetime.datetime(2026, 11, 23, 21, 0, 0), "tags": {"b"}},
        [datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
         datetime.date(2026, 1, 2)],
        {"frozen": frozenset([3]), "id": uuid.UUID(int=7), "price": decimal.Decimal("1.50"),
         "raw": b"bytes"},
        {"vm": Instance(), "flavor": Flavor(2, 1.5), "error": ValueError("x")},
        {"colour": Colour.RED, Colour.GREEN: [Colour.RED], "flavour": Flavour.SMALL},
        ordered, {"ordered": ordered}, Masked(hidden=2), [Masked()],
        [Ratio(1.5), {Ratio(2.5): 1}], [Name("n\u00e9"), {Name("k"): Name("v")}],
        MyList([1, MyDict(a=MyList([2]))]), collections.defaultdict(list, a=[1]),
        Point(1, 2), [True, 1, Colour.RED, 1.0],
    ]:
        check_encodes(codec, value)   # key order included: same() compares it


@libraries_only
def test_plain_enum_travels_as_its_value(codec):
    """The one place the value differs from jsonutils': orjson writes an Enum member as
    its value and never asks to_primitive, which sent the member's __dict__."""
    class Power(enum.Enum):
        ON = "on"
    assert json.loads(wire_text(codec, [Power.ON]))["response"] == ["on"]


def test_deep_nesting(codec):
    # orjson stops at 255 levels; the stdlib goes on to the interpreter's limit.
    for depth in (1, 2, 200, 254, 255, 256, 300, 600):
        check_encodes(codec, nested_list(depth))
        d = {}
        for _ in range(depth):
            d = {"k": d}
        check_encodes(codec, d)
    with pytest.raises(CodecError, match="cannot serialize message body as JSON"):
        codec.encode_reply("r", "c", response=nested_list(100_000))


def test_errors_are_codec_errors(codec):
    circular = []
    circular.append(circular)
    circular_dict = {}
    circular_dict["me"] = circular_dict

    class Opaque:
        __slots__ = ()

    for value in [circular, circular_dict, {(1, 2): "tuple key"}, [10 ** 5000],
                  {10 ** 5000: 1}, [Opaque()], {"t": datetime.time(1, 2)}]:
        with pytest.raises(CodecError, match="cannot serialize message body as JSON"):
            codec.encode_reply("r", "c", response=value)


def test_envelope_inner_text(codec):
    """A 2.0 notification's inner message is a JSON string in the JSON body: the original
    driver json.loads it twice."""
    message = {"payload": {"nan": math.nan, "text": "é\u2028", "big": 2**65}}
    msg = proton.Message()
    msg.decode(codec.encode_notification("n", message, {}, 2.0))
    inner = json.loads(msg.body)["request"]["oslo.message"]
    assert same(json.loads(inner), jsonutils_value(message))
    assert same(codec.decode(codec.encode_notification("n", message, {}, 2.0)).request,
                jsonutils_value(message))


# --- decoding: what any sender wrote ---------------------------------------------------

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


@given(json_values)
def test_codecs_read_what_the_original_wrote(codec, value):
    """The original driver's body (json.dumps, NaN and big integers included) through
    both codecs, as an amqp-value string."""
    text = json.dumps({"response": value}, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps({"response": value})   # Proton cannot carry lone surrogates
    decoded = codec.decode(amqp_value_message(text))
    assert same(decoded.response, json.loads(text)["response"])


@given(json_values)
def test_codecs_read_each_other(both_codecs, value):
    for writer in both_codecs:
        try:
            data = writer.encode_reply("r", "c", response=value)
        except CodecError:
            return
        for reader in both_codecs:
            assert same(reader.decode(data).response, jsonutils_value(value))


@given(st.binary(max_size=64))
def test_loads_random_bytes(data):
    check_loads(data)


@given(st.text(st.sampled_from('{}[],:"\\u0123456789abcdefABCDEF.eE+-ntrufalsNIy '
                               '\t\n\r\x00\x1f\x7f\u00e9\ud83d\ude00\U0001f600'),
               max_size=40))
def test_loads_json_alphabet_soup(text):
    check_loads(text.encode("utf-8", "surrogatepass"))


def test_loads_every_byte_value_in_strings():
    for byte in range(0x100):
        body = b"ab" + bytes([byte]) + b"cd"
        check_loads(b'"' + body + b'"')
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
    "-9223372036854775809", "18446744073709551615", "18446744073709551616",
    "99999999999999999999999999999999", "-99999999999999999999999999999999",
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
    got = serializers.loads_json(b'{"a": 1, "b": 2, "a": 3}')
    assert list(got.items()) == [("a", 3), ("b", 2)]


def test_loads_accepts_str_and_bytes_like():
    for data in ('{"a": [1]}', b'{"a": [1]}', bytearray(b'{"a": [1]}'),
                 memoryview(b'{"a": [1]}')):
        assert serializers.loads_json(data) == {"a": [1]}
    assert serializers.loads_json('"\ud800"') == "\ud800"   # a str may hold one


def test_loads_error_messages(codec):
    for text, phrase in [('{"a": 1  x}', "not valid JSON"), ("", "not valid JSON"),
                         ("[1] 2", "not valid JSON"), ('"ab\ncd"', "not valid JSON"),
                         ("[" * 100_000, "nested too deeply")]:
        with pytest.raises(CodecError, match=phrase):
            serializers.loads_json(text.encode())
        with pytest.raises(CodecError, match=phrase):
            codec.decode(amqp_value_message(text))
    with pytest.raises(CodecError, match="not valid UTF-8"):
        serializers.loads_json(b'{"a": "\xff"}')
    assert isinstance(CodecError("x"), ValueError)


def test_loads_deep_nesting(codec):
    for depth in (1, 2, 64, 255, 256, 500):
        if depth <= 256:   # json.loads and same() hit the recursion limit deeper down
            check_loads(b"[" * depth + b"]" * depth)
        obj = '{"k":' * (depth - 1) + "{}" + "}" * (depth - 1)
        got = codec.decode(amqp_value_message('{"response": ' + obj + "}")).response
        for _ in range(depth - 1):
            got = got["k"]
        assert got == {}
    for depth in (100_000, 10_000_000):
        with pytest.raises(CodecError):
            serializers.loads_json(b"[" * depth)
        with pytest.raises(CodecError):
            codec.decode(amqp_value_message('{"response": ' + '{"a":' * 100_000))


def test_loads_large_documents(codec):
    value = {"s" + str(i): ["x" * 300, "\u00e9\u20ac\U0001f600" * 50, i, i / 7, None]
             for i in range(2000)}
    check_loads(json.dumps(value).encode())
    check_loads(json.dumps(value, ensure_ascii=False).encode())
    check_loads(json.dumps("\\" * 100_000 + "\u20ac" * 100_000).encode())
    assert codec.decode(codec.encode_reply("r", "c", response=value)).response == value


# --- the stdlib fallback, forced -------------------------------------------------------

_STDLIB_CHILD = r"""
import pickle, sys
from fastamqp import engine, serializers
sent = pickle.loads(sys.stdin.buffer.read())
codec = engine.codec
out = {"libraries": serializers.json_libraries(), "engine": codec.IMPLEMENTATION,
       "read": [codec.decode(data).response for data in sent["messages"]],
       "wrote": [codec.encode_reply("r", "c", response=v) for v in sent["values"]]}
sys.stdout.buffer.write(pickle.dumps(out))
"""

FALLBACK_VALUES = [{"a": [1, 2.5, None, "é€😀", True]}, {"nan": math.nan, "none": None},
                   [2**70, {"k": -0.0}], "\ud800", {"when": datetime.date(2026, 1, 2)}]


def test_forced_stdlib_reads_and_is_read(codec):
    """FASTAMQP_JSON=stdlib (both engines, in a child process): the text is jsonutils'
    byte for byte, and each side reads what the other wrote."""
    ours = [codec.encode_reply("r", "c", response=v) for v in FALLBACK_VALUES]
    env = dict(os.environ, FASTAMQP_JSON="stdlib")
    if codec.IMPLEMENTATION == "python":
        env["FASTAMQP_PUREPYTHON"] = "1"
    result = subprocess.run([sys.executable, "-c", _STDLIB_CHILD], env=env,
                            input=pickle.dumps({"messages": ours, "values": FALLBACK_VALUES}),
                            capture_output=True, timeout=120, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr.decode()
    child = pickle.loads(result.stdout)
    assert child["libraries"] == "dumps: stdlib json, loads: stdlib json"
    assert child["engine"] == codec.IMPLEMENTATION
    expected = [jsonutils_value(v) for v in FALLBACK_VALUES]
    for got, want in zip(child["read"], expected, strict=True):
        assert same(got, want)
    for data, value, want in zip(child["wrote"], FALLBACK_VALUES, expected, strict=True):
        msg = proton.Message()
        msg.decode(data)
        assert msg.body == json.dumps({"response": value}, default=serializers.to_primitive)
        assert same(codec.decode(data).response, want)


def test_loads_without_msgspec_is_the_stdlib(monkeypatch):
    monkeypatch.setattr(serializers, "MSGSPEC_LOADS", None)
    for data in (b'{"a": [NaN, 1e400, 123456789012345678901234567890]}', b'"\\ud800"',
                 b"[1, 2", b'"\xff"'):
        check_loads(data)


def test_dumps_without_orjson_is_the_stdlib(monkeypatch):
    monkeypatch.setattr(serializers, "ORJSON_DUMPS", None)
    value = {"a": [1, 2.5, None, "é"], "b": math.nan}
    assert serializers.dumps_json(value) == json.dumps(value).encode()


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
        docs.append(serializers.dumps_json(value))
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
