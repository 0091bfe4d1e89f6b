"""Bounded fuzzing of both decoders (C ``_core`` and pure ``engine.pure.codec``).

Every input goes into BOTH decoders. The only exception allowed out is
``fastamqp.exceptions.CodecError``; anything else (KeyError, SystemError, ...), a crash
or a hang (faulthandler aborts the run after FASTAMQP_FUZZ_HANG_S seconds, default 600)
fails. Where the two decoders disagree (one succeeds and the other fails, or both
succeed with different results) the input is checked with the strict AMQP oracle in
``amqp_strict``: a disagreement on malformed AMQP is explained (Proton C 0.37 and the
Proton 0.40 core of python-qpid-proton skip over damage differently, and neither reports
it); a disagreement on well-formed AMQP fails the test with a reproducer, unless it is
one of the divergences listed in KNOWN_DIVERGENCES (each reported, each with an xfail
test in test_codec.py).

Default size: 150,000 mutated + 30,000 random + 10,000 well-formed-but-odd inputs, each
decoded by both engines (380,000 decodes, ~15 s on this 2-core machine).

Environment:
  FASTAMQP_FUZZ_SEED=<int>    vary the inputs (default 1; the seed is in failure messages)
  FASTAMQP_FUZZ_COUNT=<float> scale every count, e.g. 10 for a long run, 0.1 for a smoke
  FASTAMQP_FUZZ_HANG_S=<int>  watchdog for one test (default 600)

Run only these: ``pytest -m fuzz``; skip them: ``pytest -m "not fuzz"``.
"""
import collections
import faulthandler
import json
import os
import random
import re
import uuid

import proton
import pytest

from fastamqp.exceptions import CodecError

from support import amqp_strict

pytestmark = pytest.mark.fuzz

SEED = int(os.environ.get("FASTAMQP_FUZZ_SEED", "1"))
SCALE = float(os.environ.get("FASTAMQP_FUZZ_COUNT", "1"))
HANG_S = int(os.environ.get("FASTAMQP_FUZZ_HANG_S", "600"))


def count(n):
    return max(1, int(n * SCALE))


# ---------------------------------------------------------------------------------------
# seeds: valid encodings of every kind, plus messages other AMQP clients send


def _foreign_messages():
    out = []
    msg = proton.Message(inferred=True)
    msg.address = "openstack.org/om/rpc/anycast/x"
    msg.id = FIXED_UUID
    msg.correlation_id = 12345
    msg.subject = "subject"
    msg.user_id = b"user"
    msg.group_id = "group"
    msg.content_encoding = "utf-8"
    msg.creation_time = 1.7e9
    msg.durable = True
    msg.priority = 9
    msg.annotations = {proton.symbol("x-opt-trace"): "abc", proton.symbol("x-n"): 5}
    msg.instructions = {proton.symbol("x-opt-d"): [1, 2]}
    msg.properties = {"key": "value", "n": 3, "f": 1.5, "b": True}
    msg.body = json.dumps({"request": {"method": "m", "args": {}}, "context": {"t": 1}})
    out.append(bytes(msg.encode()))
    msg.body = json.dumps({"response": [1, {"a": None}]}).encode()
    msg.content_type = "application/json"
    out.append(bytes(msg.encode()))
    msg = proton.Message(inferred=True, body=[1, "two", 3.0])
    out.append(bytes(msg.encode()))
    msg = proton.Message(body={"request": {}, "context": {}})
    out.append(bytes(msg.encode()))
    return out


FIXED_UUID = uuid.UUID("0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0")


def seeds(codec):
    trace = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    out = [
        codec.encode_request("openstack.org/om/rpc/anycast/nova/compute/hôst",
                             {"method": "m", "args": {"a": [1, 2.5, None, "ü", True]},
                              "version": "5.0"}, dict(trace, user="x"),
                             message_id=FIXED_UUID.hex, reply_to="reply/1", timeout=30,
                             call_monitor_timeout=5, now=1.7e9),
        codec.encode_request("a", {"method": "cast"}, {}, serializer="msgpack"),
        codec.encode_request("a", {"method": "m"}, trace, message_id=FIXED_UUID,
                             reply_to="r", timeout=0.5, serializer="msgpack"),
        codec.encode_request("a", {}, {}, message_id=2 ** 64 - 1),
        codec.encode_request("a", {}, {}, message_id=b"\x00\x01binary"),
        codec.encode_reply("r", "cid", response={"x": [1, 2], "y": "z" * 300}),
        codec.encode_reply("r", "cid", failure=json.dumps({"class": "E", "tb": ["a"]})),
        codec.encode_reply("r", b"\x01\x02", response=[1], serializer="msgpack"),
        codec.encode_reply("r", 42, response=None),
        codec.encode_heartbeat("r", "cid", 10),
        codec.encode_heartbeat("r", FIXED_UUID, 0),
        codec.encode_notification("n", {"event_type": "x", "payload": {"p": 1}}, {}),
        codec.encode_notification("n", {"event_type": "x"}, {}, version=1.0),
        codec.encode_notification("n", {"event_type": "x"}, {}, serializer="msgpack"),
    ]
    return out + _foreign_messages()


# ---------------------------------------------------------------------------------------
# mutators

INTERESTING_BYTES = [0x00, 0x01, 0x40, 0x41, 0x42, 0x45, 0x53, 0x70, 0x71, 0x72, 0x73,
                     0x74, 0x75, 0x76, 0x77, 0x78, 0x7f, 0x80, 0x83, 0x98, 0xa0, 0xa1,
                     0xa3, 0xb0, 0xb1, 0xb3, 0xc0, 0xc1, 0xd0, 0xd1, 0xe0, 0xf0, 0xfe,
                     0xff]
INTERESTING_WORDS = [0, 1, 0x7f, 0x80, 0xff, 0x7fffffff, 0x80000000, 0xfffffffe,
                     0xffffffff]
PREFIXES = [b"\x00Sp", b"\x00Sw", b"\x00Ss", b"\x00Su", b"\x00Sv", b"\x00Sr", b"\x00St",
            b"\x00Sx", b"\x00Sq", b"\x00S", b"\x00", b"\x00\x80\x00\x00\x00\x00\x00\x00"
            b"\x00w", b"\x00\xa3\x11amqp:amqp-value:*", b""]


class Mutator:
    def __init__(self, rng, corpus):
        self.rng = rng
        self.corpus = corpus

    def random_bytes(self, n):
        return bytes(self.rng.getrandbits(8) for _ in range(n))

    def mutate(self, data):
        rng = self.rng
        buf = bytearray(data)
        op = rng.randrange(10)
        if op == 0 and buf:                                   # bit flips
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:                                 # byte substitutions
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] = (rng.choice(INTERESTING_BYTES)
                                                if rng.random() < 0.7
                                                else rng.getrandbits(8))
        elif op == 2 and len(buf) >= 4:                       # length-field words
            i = rng.randrange(len(buf) - 3)
            width = rng.choice([1, 4])
            value = rng.choice(INTERESTING_WORDS) & ((1 << (8 * width)) - 1)
            buf[i:i + width] = value.to_bytes(width, "big")
        elif op == 3:                                         # insertions
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = self.random_bytes(rng.randint(1, 8))
        elif op == 4 and buf:                                 # deletions
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randint(1, 8)]
        elif op == 5:                                         # truncation
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 6:                                         # splice two messages
            other = rng.choice(self.corpus)
            buf = (buf[:rng.randrange(len(buf) + 1)]
                   + other[rng.randrange(len(other) + 1):])
        elif op == 7:                                         # duplicate a chunk
            if buf:
                i = rng.randrange(len(buf))
                j = min(len(buf), i + rng.randint(1, 32))
                buf[j:j] = buf[i:j]
        elif op == 8:                                         # concatenate messages
            buf += rng.choice(self.corpus)
        else:                                                 # AMQP-looking junk
            buf = bytearray(rng.choice(PREFIXES) + self.random_bytes(rng.randrange(48)))
        return bytes(buf)

    def input(self):
        data = self.rng.choice(self.corpus)
        for _ in range(1 + (self.rng.random() < 0.3) + (self.rng.random() < 0.1)):
            data = self.mutate(data)
        return data


# ---------------------------------------------------------------------------------------
# the harness

# name -> predicate over the input, for a divergence between the engines on well-formed
# AMQP that is understood and accepted; each would be reported and have an xfail test.
# Empty: the two found while writing these tests (symbol bodies, non-string
# application-properties keys) were fixed in both codecs.
KNOWN_DIVERGENCES = {}


class Campaign:
    def __init__(self, c_codec, py_codec, name):
        self.codecs = (c_codec, py_codec)
        self.name = name
        self.inputs = 0
        self.outcomes = collections.Counter()
        self.explained = collections.Counter()
        self.known = collections.Counter()
        self.unexplained = []
        self.crashes = []
        self.malformed_accepted = collections.Counter()

    def _run(self, codec, data):
        try:
            return True, codec.decode(data)
        except CodecError as exc:
            return False, str(exc)
        except Exception as exc:   # anything but CodecError is a bug
            self.crashes.append((codec.IMPLEMENTATION, data,
                                 f"{type(exc).__name__}: {exc}"))
            return None, None

    def feed(self, data):
        self.inputs += 1
        (c_ok, c_res), (p_ok, p_res) = (self._run(codec, data) for codec in self.codecs)
        if c_ok is None or p_ok is None:
            return
        self.outcomes[(c_ok, p_ok)] += 1
        if c_ok and p_ok and c_res == p_res:
            if amqp_strict.malformation(data) is not None:
                self.malformed_accepted["both"] += 1
            return
        if not c_ok and not p_ok:
            return
        reason = amqp_strict.malformation(data)
        if reason is not None:
            if c_ok or p_ok:
                self.malformed_accepted["c" if c_ok else "python"] += c_ok != p_ok
            self.explained[re.sub(r" (at byte|0x|of size|descriptor).*", "",
                                  reason)] += 1
            return
        for known, predicate in KNOWN_DIVERGENCES.items():
            if predicate(data):
                self.known[known] += 1
                return
        self.unexplained.append((data, c_res if c_ok else f"CodecError: {c_res}",
                                 p_res if p_ok else f"CodecError: {p_res}"))

    def check(self):
        summary = (f"[{self.name}] seed={SEED} inputs={self.inputs} "
                   f"(c ok, python ok) -> {dict(self.outcomes)}; "
                   f"explained divergences on malformed AMQP: {dict(self.explained)}; "
                   f"known divergences: {dict(self.known)}; "
                   f"malformed inputs decoded anyway: {dict(self.malformed_accepted)}")
        print(summary)
        problems = []
        for impl, data, text in self.crashes[:10]:
            problems.append(f"{impl} decoder raised {text} for "
                            f"bytes.fromhex('{data.hex()}')")
        for data, c_res, p_res in self.unexplained[:10]:
            problems.append(f"divergence on well-formed AMQP: "
                            f"bytes.fromhex('{data.hex()}')\n    c:      {_show(c_res)}"
                            f"\n    python: {_show(p_res)}")
        assert not problems, (f"{len(self.crashes)} non-CodecError exceptions, "
                              f"{len(self.unexplained)} unexplained divergences "
                              f"(FASTAMQP_FUZZ_SEED={SEED}):\n" + "\n".join(problems)
                              + "\n" + summary)


def _show(result):
    return result.as_dict() if hasattr(result, "as_dict") else result


@pytest.fixture
def watchdog():
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def codecs(both_codecs):
    return both_codecs


def test_fuzz_mutated_messages(codecs, watchdog):
    c_codec, py_codec = codecs
    rng = random.Random(SEED)
    corpus = seeds(py_codec)
    campaign = Campaign(c_codec, py_codec, "mutated")
    for data in corpus:
        campaign.feed(data)
    mutator = Mutator(rng, corpus)
    for _ in range(count(150_000)):
        campaign.feed(mutator.input())
    campaign.check()
    assert campaign.inputs >= count(150_000)


def test_fuzz_random_bytes(codecs, watchdog):
    c_codec, py_codec = codecs
    rng = random.Random(SEED + 1)
    mutator = Mutator(rng, [b""])
    campaign = Campaign(c_codec, py_codec, "random")
    for i in range(count(30_000)):
        if i % 2:
            data = mutator.random_bytes(rng.randrange(1, 96))
        else:
            data = rng.choice(PREFIXES) + mutator.random_bytes(rng.randrange(64))
        campaign.feed(data or b"\x00")
    campaign.check()


# ---------------------------------------------------------------------------------------
# well-formed AMQP with odd contents: every disagreement here is a real divergence

def _odd_value(rng, depth=0):
    choices = [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randrange(-2 ** 31, 2 ** 31),
        lambda: proton.ulong(rng.randrange(2 ** 64)), lambda: rng.random() * 1e6,
        lambda: "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(8))),
        lambda: proton.symbol("sym%d" % rng.randrange(100)),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randrange(8))),
        lambda: uuid.UUID(int=rng.getrandbits(128)), lambda: proton.char("x"),
        lambda: proton.timestamp(rng.randrange(2 ** 40)),
    ]
    if depth < 2:
        choices += [lambda: [_odd_value(rng, depth + 1) for _ in range(rng.randrange(4))],
                    lambda: {str(k): _odd_value(rng, depth + 1)
                             for k in range(rng.randrange(4))}]
    return rng.choice(choices)()


def _odd_json(rng):
    base = {"request": {"method": "m", "args": {"a": 1}}, "context": {"c": [1]},
            "response": None, "failure": "{}", "call_monitor_timeout": 5,
            "oslo.version": "2.0", "oslo.message": "{}"}
    keys = rng.sample(sorted(base), rng.randrange(0, 4))
    text = json.dumps({k: base[k] for k in keys})
    if rng.random() < 0.5:
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            if chars:
                chars[rng.randrange(len(chars))] = rng.choice('{}[]":,0a\\ \x00é')
        text = "".join(chars)
    return text


def _odd_message(rng):
    msg = proton.Message(inferred=rng.random() < 0.5)
    if rng.random() < 0.8:
        msg.address = rng.choice(["a", "ü/b", "openstack.org/om/x", ""])
    if rng.random() < 0.3:
        msg.reply_to = "reply"
    if rng.random() < 0.4:
        msg.id = rng.choice(["id", 7, uuid.UUID(int=5), b"bin", 2 ** 64 - 1])
    if rng.random() < 0.5:
        msg.correlation_id = rng.choice(["cid", 0, uuid.UUID(int=9), b"\x00", ""])
    if rng.random() < 0.3:
        msg.ttl = rng.choice([0.001, 1, 30, 4294967.295])
    if rng.random() < 0.3:
        msg.expiry_time = rng.choice([1, 12345, 1.7e9])
    if rng.random() < 0.3:
        msg.content_type = rng.choice(["application/msgpack", "application/json",
                                       "text/json", "application/x-msgpack", "text/plain",
                                       "application/vnd.msgpack"])
    if rng.random() < 0.2:
        msg.annotations = {proton.symbol("x-opt-a"): _odd_value(rng)}
    if rng.random() < 0.2:
        msg.properties = {"p": _odd_value(rng)}
    if rng.random() < 0.1:
        msg.subject = "s"
    kind = rng.randrange(6)
    if kind == 0:
        msg.body = _odd_json(rng)
    elif kind == 1:
        msg.body = _odd_json(rng).encode("utf-8")
    elif kind == 2:
        import msgpack
        msg.body = msgpack.packb(json.loads(json.dumps(
            {"request": {"m": 1}, "context": {}} if rng.random() < 0.5
            else {"response": [1, 2]})))
    elif kind == 3:
        msg.body = _odd_value(rng)
    elif kind == 4:
        msg.body = proton.symbol(_odd_json(rng).encode("ascii", "replace").decode())
    return bytes(msg.encode())


def test_fuzz_well_formed_odd_messages(codecs, watchdog):
    c_codec, py_codec = codecs
    rng = random.Random(SEED + 2)
    campaign = Campaign(c_codec, py_codec, "well-formed")
    for _ in range(count(10_000)):
        try:
            data = _odd_message(rng)
        except Exception:   # proton refuses to encode some combinations
            continue
        campaign.feed(data)
    campaign.check()
    assert not campaign.explained or set(campaign.explained) <= {"string is not UTF-8"}


# ---------------------------------------------------------------------------------------
# the pure codec's two paths: proton.Message (the reference) and Proton C through cffi

class _PureReference:
    IMPLEMENTATION = "python (proton.Message)"

    def __init__(self, py_codec):
        self.decode = py_codec._message_decode


def test_fuzz_pure_fast_path_matches_reference(watchdog):
    """The pure codec's fast path (python-qpid-proton's cffi binding, as _core uses
    Proton C) against its proton.Message path, on the mutated, random and well-formed
    inputs above, fed as to the C codec: the same results, or a disagreement explained
    by malformed AMQP."""
    from fastamqp.engine import py_codec
    if not py_codec.FAST:
        pytest.skip("python-qpid-proton has no cffi binding (< 0.39): one path only")
    rng = random.Random(SEED + 3)
    corpus = seeds(py_codec)
    campaign = Campaign(py_codec, _PureReference(py_codec), "pure fast/reference")
    for data in corpus:
        campaign.feed(data)
    mutator = Mutator(rng, corpus)
    for _ in range(count(30_000)):
        campaign.feed(mutator.input())
    for _ in range(count(5_000)):
        try:
            data = _odd_message(rng)
        except Exception:
            continue
        campaign.feed(data)
    campaign.check()
