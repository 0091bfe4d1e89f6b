"""A small, strict, independent AMQP 1.0 type decoder for the tests.

Proton's ``pn_message_decode`` does not validate its input (it reports no error for
truncated sections, trailing garbage or list sizes that disagree with their contents),
and Proton C 0.37 (the C engine) and the 0.40 core bundled with python-qpid-proton
(the pure engine) skip over such damage differently. The codec tests use this module
as an oracle: :func:`malformation` says whether bytes are a strictly well-formed AMQP
message, and :func:`section_bounds` where its sections end.
"""


class Malformed(Exception):
    pass


_FIXED = {0x40: 0, 0x41: 0, 0x42: 0, 0x43: 0, 0x44: 0, 0x45: 0,
          0x50: 1, 0x51: 1, 0x52: 1, 0x53: 1, 0x54: 1, 0x55: 1, 0x56: 1,
          0x60: 2, 0x61: 2, 0x70: 4, 0x71: 4, 0x72: 4, 0x73: 4, 0x74: 4,
          0x80: 8, 0x81: 8, 0x82: 8, 0x83: 8, 0x84: 8, 0x94: 16, 0x98: 16}
_VARIABLE = {0xa0: 1, 0xa1: 1, 0xa3: 1, 0xb0: 4, 0xb1: 4, 0xb3: 4}
_COMPOUND = {0xc0: 1, 0xc1: 1, 0xd0: 4, 0xd1: 4}
_ARRAY = {0xe0: 1, 0xf0: 4}
_ULONG_CODES = (0x44, 0x53, 0x80)
_UNSIGNED = (0x43, 0x44, 0x50, 0x52, 0x53, 0x60, 0x70, 0x80)

SECTION_RANK = {0x70: 0, 0x71: 1, 0x72: 2, 0x73: 3, 0x74: 4,
                0x75: 5, 0x76: 5, 0x77: 5, 0x78: 6}
SECTION_NAMES = {0x70: "header", 0x71: "delivery-annotations",
                 0x72: "message-annotations", 0x73: "properties",
                 0x74: "application-properties", 0x75: "data", 0x76: "amqp-sequence",
                 0x77: "amqp-value", 0x78: "footer"}


class Described:
    __slots__ = ("descriptor", "descriptor_code", "value")

    def __init__(self, descriptor, descriptor_code, value):
        self.descriptor = descriptor
        self.descriptor_code = descriptor_code
        self.value = value


def _take(buf, pos, n):
    if pos + n > len(buf):
        raise Malformed(f"truncated at byte {pos}")
    return buf[pos:pos + n], pos + n


def _uint(buf, pos, width):
    raw, pos = _take(buf, pos, width)
    return int.from_bytes(raw, "big"), pos


def _constructor(buf, pos):
    code, pos = _uint(buf, pos, 1)
    if code != 0x00:
        return code, None, pos
    dcode, _ = _uint(buf, pos, 1)
    descriptor, pos = _value(buf, pos)
    code, pos = _uint(buf, pos, 1)
    if code == 0x00:
        raise Malformed("described constructor inside a descriptor")
    return code, (descriptor, dcode), pos


def _payload(buf, pos, code):
    if code in _FIXED:
        raw, pos = _take(buf, pos, _FIXED[code])
        if code == 0x56 and raw[0] > 1:
            raise Malformed("boolean byte is neither 0 nor 1")
        if code == 0x73:
            char = int.from_bytes(raw, "big")
            if char > 0x10FFFF or 0xD800 <= char <= 0xDFFF:
                raise Malformed("char is not a Unicode code point")
        if code == 0x40:
            return None, pos
        if code in (0x41, 0x42, 0x56):
            return code == 0x41 or (code == 0x56 and raw[0] == 1), pos
        if code == 0x45:
            return [], pos
        if code in _UNSIGNED:
            return int.from_bytes(raw, "big") if raw else 0, pos
        return ("fixed", code, raw), pos
    if code in _VARIABLE:
        size, pos = _uint(buf, pos, _VARIABLE[code])
        raw, pos = _take(buf, pos, size)
        if code in (0xa1, 0xb1):
            try:
                return raw.decode("utf-8"), pos
            except UnicodeDecodeError:
                raise Malformed("string is not UTF-8") from None
        if code in (0xa3, 0xb3):
            if any(b > 0x7f for b in raw):
                raise Malformed("symbol is not ASCII")
            return ("symbol", raw.decode("ascii")), pos
        return ("binary", raw), pos
    if code in _COMPOUND or code in _ARRAY:
        width = _COMPOUND.get(code) or _ARRAY[code]
        size, pos = _uint(buf, pos, width)
        region, end = _take(buf, pos, size)
        count, inner = _uint(region, 0, width)
        items = []
        if code in _ARRAY:
            element_code, _, inner = _constructor(region, inner)
            for _ in range(count):
                item, inner = _payload(region, inner, element_code)
                items.append(item)
        else:
            for _ in range(count):
                item, inner = _value(region, inner)
                items.append(item)
        if inner != len(region):
            raise Malformed(f"compound of size {size} does not hold exactly its "
                            f"{count} items")
        if code in (0xc1, 0xd1):
            if count % 2:
                raise Malformed("map with an odd number of items")
            return ("map", items), end
        if code in _ARRAY:
            return ("array", items), end
        return items, end
    raise Malformed(f"unknown constructor 0x{code:02x}")


def _value(buf, pos):
    code, described, pos = _constructor(buf, pos)
    value, pos = _payload(buf, pos, code)
    if described is not None:
        return Described(described[0], described[1], value), pos
    return value, pos


def sections(buf):
    """[(descriptor, end offset, value)] of a well-framed message; raises Malformed."""
    out = []
    pos = 0
    while pos < len(buf):
        value, pos = _value(buf, pos)
        if not isinstance(value, Described):
            raise Malformed("a top-level value is not a described section")
        if value.descriptor_code not in _ULONG_CODES or value.descriptor not in SECTION_RANK:
            raise Malformed(f"unknown section descriptor {value.descriptor!r}")
        out.append((value.descriptor, pos, value.value))
    return out


def section_bounds(buf):
    """Offsets where the sections of a well-formed message end."""
    return [end for _, end, _ in sections(buf)]


def malformation(buf):
    """None when ``buf`` is a strictly well-formed AMQP 1.0 message, else why not."""
    try:
        found = sections(buf)
    except Malformed as exc:
        return str(exc)
    last = -1
    bodies = 0
    for descriptor, _, body in found:
        rank = SECTION_RANK[descriptor]
        if rank < last or (rank == last and rank != 5):
            return "sections out of order or repeated"
        last = rank
        if rank == 5:
            bodies += 1
        if descriptor in (0x70, 0x73) and not isinstance(body, list):
            return f"{SECTION_NAMES[descriptor]} section is not a list"
        if descriptor in (0x71, 0x72, 0x74, 0x78) and not (
                isinstance(body, tuple) and body[0] == "map"):
            return f"{SECTION_NAMES[descriptor]} section is not a map"
        if descriptor == 0x75 and not (isinstance(body, tuple) and body[0] == "binary"):
            return "data section is not binary"
        if descriptor == 0x76 and not isinstance(body, list):
            return "amqp-sequence section is not a list"
    if bodies > 1:
        return "more than one body section"
    return None
