# -*- coding: utf-8 -*-
"""Unit tests of the legacy helper (pixgate_legacy.py): its codec and header parser.

Plain unittest, so that the old interpreters run it themselves
(``python2.7 python-helper/tests/test_legacy.py``, likewise ``jython``; tests/legacy.rs
does both); pytest collects it on CPython 3, where the codec is also checked against
``execnet`` and the main helper.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pixgate_legacy as L

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "golden")
PY3 = sys.version_info[0] >= 3


def h(text):
    return bytes(bytearray.fromhex(text.replace(" ", "")))


class WorkedExamples(unittest.TestCase):
    """PROTOCOL.md §5.4, byte for byte."""

    def test_examples(self):
        for value, hexed in [
            (1, "02 46 00 00 00 01 51"),
            (-1, "02 46 ff ff ff ff 51"),
            ([1], "02 4b 00 00 00 01 46 00 00 00 00 46 00 00 00 01 50 51"),
            (2 ** 31, "02 48 00 00 00 0a 32 31 34 37 34 38 33 36 34 38 51"),
            (1.5, "02 44 3f f8 00 00 00 00 00 00 51"),
            (frozenset([3]) if False else set([3]), "02 46 00 00 00 03 4f 00 00 00 01 51"),
            (-2 ** 31 - 1, "02 48 00 00 00 0b 2d 32 31 34 37 34 38 33 36 34 39 51"),
        ]:
            if not PY3 and type(value) is long:  # noqa: F821
                continue  # written as execnet 1.9 writes a long: see Python2Strings
            self.assertEqual(L.dumps(value), h(hexed), value)
            self.assertEqual(L.loads(h(hexed)), value)
        d = {u"a": (1, 2)}
        raw = h("02 4a 4e 00 00 00 01 61 46 00 00 00 01 46 00 00 00 02 40 00 00 00 02 50 51")
        self.assertEqual(L.loads(raw), d)
        self.assertEqual(L.loads(h("02 4e 00 00 00 02 c3 a9 51")), u"\xe9")
        self.assertEqual(L.loads(h("02 41 00 00 00 02 00 ff 51")), b"\x00\xff")
        self.assertEqual(L.loads_payload(h("4b 00 00 00 01 46 00 00 00 00 46 00 00 00 01 50 51")), [1])

    def test_round_trips(self):
        values = [
            None, True, False, 0, 7, -2 ** 31, 2 ** 31 - 1, 2 ** 63, -10 ** 60, 0.0, -1.5e300,
            float("inf"), 2 - 3j, u"", u"\xe9\u20ac\U0001f600", b"", b"\x00\xff", [], (),
            {}, [1, [2, [3]]], (1, (2, u"x")), {u"k": [None]}, set([1, 2]),
            frozenset([u"a"]), {(1, 2): frozenset([3])},
        ]
        for v in values:
            self.assertEqual(L.loads(L.dumps(v)), v)
            self.assertEqual(L.loads_payload(L.dumps_payload(v)), v)
        self.assertEqual(L.loads(L.dumps(bytearray(b"ab"))), b"ab")

    def test_array_reference(self):
        ref = L.ArrayRef(u"/pxg-1a2b-0123456789abcdef", 7, L.LENT)
        raw = L.dumps_payload(ref)
        self.assertEqual(raw, b"U\x00\x00\x00\x1a/pxg-1a2b-0123456789abcdef" + b"\x00" * 7 + b"\x07\x01Q")
        self.assertEqual(L.loads_payload(raw), ref)


class Python2Strings(unittest.TestCase):
    """str, unicode and long as execnet 1.9 writes them on Python 2 (on Python 3 as
    execnet 2 does)."""

    def test_str_unicode_long(self):
        if PY3:
            self.assertEqual(L.dumps("ab"), b"\x02N\x00\x00\x00\x02abQ")
            self.assertEqual(L.dumps(b"ab"), b"\x02A\x00\x00\x00\x02abQ")
            self.assertEqual(L.loads_payload(b"M\x00\x00\x00\x01\xe9Q"), u"\xe9")
            self.assertEqual(L.loads(b"\x02M\x00\x00\x00\x01\xe9Q"), b"\xe9")
            return
        self.assertEqual(L.dumps("ab"), b"\x02M\x00\x00\x00\x02abQ")
        self.assertEqual(L.dumps(u"\xe9"), b"\x02S\x00\x00\x00\x02\xc3\xa9Q")
        self.assertEqual(L.dumps(long(5)), b"\x02G\x00\x00\x00\x05Q")  # noqa: F821
        self.assertEqual(L.dumps(long(2) ** 70), b"\x02I\x00\x00\x00\x161180591620717411303424Q")  # noqa: F821
        self.assertEqual(type(L.loads(b"\x02N\x00\x00\x00\x01aQ")), unicode)  # noqa: F821
        self.assertEqual(type(L.loads(b"\x02A\x00\x00\x00\x01aQ")), str)
        self.assertEqual(L.loads_payload(b"M\x00\x00\x00\x01\xe9Q"), b"\xe9")
        self.assertEqual(L.dumps(buffer(b"xy")), b"\x02A\x00\x00\x00\x02xyQ")  # noqa: F821

    def test_lone_surrogates_are_refused(self):
        with self.assertRaises(L.LoadError):
            L.loads(b"\x02N\x00\x00\x00\x03\xed\xa0\x80Q")
        try:
            lone = (unichr if not PY3 else chr)(0xD800)  # noqa: F821
        except ValueError:
            return  # Jython's strings cannot hold a lone surrogate
        with self.assertRaises(L.DumpError):
            L.dumps(u"a" + lone)
        self.assertEqual(L._safe_text(u"a" + lone + u"b"), u"a\\ud800b")
        self.assertEqual(L._safe_text(u"\U0001f600"), u"\U0001f600")


class HostileInput(unittest.TestCase):
    """Every rejection of PROTOCOL.md §5.6 is a LoadError, never a crash or a hang."""

    def test_rejections(self):
        cases = [
            (b"", "empty"),
            (b"\x03Q", "version"),
            (b"\x02", "missing stop"),
            (b"\x02LQx", "trailing"),
            (b"\x02ZQ", "unknown opcode"),
            (b"\x02B\x00\x00\x00\x01Q", "channel"),
            (b"\x02F\x00\x00", "truncated"),
            (b"\x02N\xff\xff\xff\xffQ", "at least 0"),
            (b"\x02K\x7f\xff\xff\xffQ", "announces"),
            (b"\x02H\x00\x00\x00\x02 1Q", "decimal"),
            (b"\x02H\x00\x00\x00\x021_Q", "decimal"),
            (b"\x02H\x00\x00\x13\x88" + b"1" * 5000 + b"Q", "characters"),
            (b"\x02N\x00\x00\x00\x01\xffQ", "utf-8"),
            (b"\x02LPQ", "needs 3 values"),
            (b"\x02LLLPQ", "expected a list or dict"),
            (b"\x02K\x00\x00\x00\x01F\x00\x00\x00\x01LPQ", "expected 0"),
            (b"\x02K\x00\x00\x00\x01F\x00\x00\x00\x00LPF\x00\x00\x00\x01LPQ", "already holds"),
            (b"\x02K\x00\x00\x00\x01Q", "announces"),
            (b"\x02K\x00\x00\x00\x01@\x00\x00\x00\x01@\x00\x00\x00\x01Q", "holds 0 of its 1"),
            (b"\x02LLQ", "2 values"),
            (b"\x02JK\x00\x00\x00\x00LPQ", "unhashable"),
            (b"\x02K\x00\x00\x00\x00O\x00\x00\x00\x01Q", "unhashable"),
            (b"\x02@\x00\x00\x00\x02Q", "takes 2"),
            (b"\x02U\x00\x00\x00\x00Q", "bad array reference"),
            (b"\x02U\x00\x00\x00\x01/" + b"\x00" * 8 + b"\x03Q", "access byte"),
        ]
        for raw, needle in cases:
            try:
                L.loads(raw)
            except L.LoadError as exc:
                self.assertIn(needle, str(exc), (raw[:20], str(exc)))
            else:
                self.fail("accepted %r" % raw[:20])

    def test_nesting_is_bounded_both_ways(self):
        deep = []
        for _ in range(511):
            deep = [deep]
        self.assertEqual(L.loads(L.dumps(deep)), deep)
        with self.assertRaises(L.DumpError):
            L.dumps([deep])
        # 513 nested lists, written by hand; refused without recursion.
        n = 513
        raw = b"\x02" + b"K\x00\x00\x00\x01F\x00\x00\x00\x00" * n + b"K\x00\x00\x00\x00" + b"P" * n + b"Q"
        with self.assertRaises(L.LoadError) as cm:
            L.loads(raw)
        self.assertIn("deeper", str(cm.exception))
        # A million tuples open: refused by the byte count, not by the recursion limit.
        raw = b"\x02" + b"L" * 100000 + b"@\x00\x00\x00\x01" * 100000 + b"Q"
        with self.assertRaises(L.LoadError):
            L.loads(raw)

    def test_ints_and_lengths_at_the_limits(self):
        self.assertEqual(L.loads(L.dumps(10 ** 4299)), 10 ** 4299)
        with self.assertRaises(L.DumpError):
            L.dumps(10 ** 4300)
        self.assertEqual(L.loads(b"\x02H\x00\x00\x00\x02+5Q"), 5)


class Headers(unittest.TestCase):
    """The golden headers of SEGMENT_FORMAT.md §11."""

    def test_golden_headers_parse(self):
        with open(os.path.join(GOLDEN, "expected.json")) as f:
            expected = json.load(f)
        for name, fields in sorted(expected.items()):
            with open(os.path.join(GOLDEN, name), "rb") as f:
                raw = f.read()
            hd = L.parse_header(raw, fields["file_size"], name)
            for key in ("header_len", "data_len", "nbytes", "itemsize", "ndim", "flags",
                        "creator_pid", "creator_start", "generation", "owner_pid"):
                self.assertEqual(getattr(hd, key), fields[key], (name, key))
            self.assertEqual(hd.dtype, fields["dtype"])
            self.assertEqual(list(hd.shape), fields["shape"])
            self.assertEqual(list(hd.strides), fields["strides"])
            self.assertEqual(L.encode_meta(hd.meta, hd.ndim)[1], h(fields["meta_hex"]), name)
            # Rebuilt byte for byte, but for the creator's identity.
            rebuilt = L.encode_header(hd.dtype, hd.shape, hd.strides, h(fields["meta_hex"]),
                                      hd.flags, hd.generation, hd.owner_pid, 1, hd.data_len)[0]
            self.assertEqual(rebuilt[:60] + rebuilt[72:], raw[:60] + raw[72:], name)

    def test_damaged_headers_are_refused_with_their_problem(self):
        with open(os.path.join(GOLDEN, "u16_c.hdr"), "rb") as f:
            good = bytearray(f.read())

        def damaged(offset, data):
            b = bytearray(good)
            b[offset:offset + len(data)] = data
            return bytes(b)

        for raw, size, problem in [
            (damaged(0, b"X"), 8192, "magic"),
            (damaged(8, b"\x00"), 8192, "uninitialised"),
            (damaged(8, b"\x02"), 8192, "version"),
            (bytes(good), 4096, "data_len"),
            (damaged(32, b">u2"), 8192, "dtype"),
            (damaged(48, b"\x04"), 8192, "itemsize"),
            (damaged(96, b"\x09"), 8192, "nbytes"),
            (damaged(56, b"\x00"), 8192, "flags"),
            (damaged(92, b"\x01"), 8192, "reserved"),
            (damaged(352, b"\x29"), 8192, "extent"),
            (damaged(608, b"\x03"), 8192, "meta"),
        ]:
            with self.assertRaises(L.HeaderError) as cm:
                L.parse_header(raw, size, "/pxg-1-0000000000000000")
            self.assertEqual(cm.exception.problem, problem, str(cm.exception))

    def test_names(self):
        self.assertEqual(L.check_name("/pxg-1a2b-0123456789abcdef"), "/pxg-1a2b-0123456789abcdef")
        for bad in ("/pxg-1-../../etc/passwd", "/pxg-1a2b-0123456789abcdeF", "pxg-1-0123456789abcdef",
                    "/pxg-123456789-0123456789abcdef"):
            with self.assertRaises(L.SegmentError):
                L.check_name(bad)
        self.assertEqual(L.check_dtype("uint16"), "<u2")
        self.assertEqual(L.check_dtype("<f8"), "<f8")
        with self.assertRaises(L.DTypeError):
            L.check_dtype(">u2")

    def test_half_floats(self):
        for f, bits in [(0.0, 0), (1.0, 0x3C00), (-2.0, 0xC000), (65504.0, 0x7BFF),
                        (float("inf"), 0x7C00), (2.0 ** -24, 1), (0.1, 0x2E66)]:
            self.assertEqual(L._float_to_half(f), bits, f)
            self.assertAlmostEqual(L._half_to_float(bits), f, delta=abs(f) * 1e-3)


class AgainstExecnetAndTheMainHelper(unittest.TestCase):
    """On CPython 3: the same bytes as execnet and as pixgate._wire."""

    def test_same_bytes(self):
        if not PY3:
            return
        try:
            import execnet

            from pixgate import _wire
        except ImportError:
            if os.environ.get("PIXGATE_TEST_STRICT") == "1":
                raise
            print("execnet or pixgate not importable, comparison not run")
            return
        for v in [None, True, 0, -5, 2 ** 31, 10 ** 40, 1.5, 1j, u"\xe9", b"\x00", [1, [2]],
                  (1, u"a"), {u"a": 1}, set([1]), frozenset([2]), [[[]]], {1: (2, 3)}]:
            self.assertEqual(L.dumps(v), execnet.dumps(v), v)
            self.assertEqual(L.dumps(v), _wire.dumps(v), v)
            self.assertEqual(L.loads(execnet.dumps(v)), v)


class ImportsAlone(unittest.TestCase):
    """Like execnet's gateway_base: the file imports alone in a fresh interpreter."""

    def test_imports_alone(self):
        if sys.platform.startswith("java"):
            return  # another JVM costs seconds; tests/legacy.rs starts Jython anyway
        code = "import sys; sys.path.insert(0, %r); import pixgate_legacy; print(pixgate_legacy.__version__)" % (
            os.path.dirname(HERE),
        )
        out = subprocess.check_output([sys.executable, "-S", "-c", code])
        self.assertEqual(out.strip(), b"0.1.0")


if __name__ == "__main__":
    unittest.main()
