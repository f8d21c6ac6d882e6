//! Hostile bytes against the public `pixgate::loads`: the cases the unit tables in
//! src/codec/tests.rs leave out, and property tests whose inputs get past the version byte.

use std::time::{Duration, Instant};

use num_complex::Complex64;
use pixgate::codec::{DUMPFORMAT_VERSION, MAX_DEPTH};
use pixgate::{
    DecodeError, DecodeErrorKind as K, FormatVersion, LoadOptions, Value, dumps, dumps_with, loads,
    loads_with,
};
use proptest::prelude::*;

/// The most one small input may take to decode (fastest of three runs).
const PER_INPUT: Duration = Duration::from_millis(5);

fn timed_loads(bytes: &[u8]) -> (Result<Value, DecodeError>, Duration) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let r = loads(bytes);
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (out.expect("ran"), best)
}

/// The version byte followed by `parts`.
fn v(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![DUMPFORMAT_VERSION];
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out
}

fn be(n: i32) -> [u8; 4] {
    n.to_be_bytes()
}

fn sized(op: u8, body: &[u8]) -> Vec<u8> {
    [&[op][..], &be(body.len() as i32), body].concat()
}

/// Inputs the unit tables in src/codec/tests.rs leave out, each with its error and offset.
#[rustfmt::skip]
fn hostile_cases() -> Vec<(Vec<u8>, K, usize)> {
    let list1 = [&b"K"[..], &be(1)].concat();
    let index = |found: &str| K::ListIndex { expected: 0, found: found.into() };
    let incomplete = K::ListIncomplete { len: 1, filled: 0 };
    let nines = sized(b'H', &[b'9'; 50]);
    let too_long = sized(b'H', &[&b"+"[..], &[b'1'; 4301]].concat());
    let mut cases = vec![
        (vec![0xff, b'L', b'Q'], K::BadVersion { found: 0xff }, 0),
        // An incomplete list in a set, a frozenset, as a dict key.
        (v(&[&list1, b"O", &be(1), b"QQQ"]), incomplete.clone(), 6),
        (v(&[&list1, b"E", &be(1), b"QQQ"]), incomplete.clone(), 6),
        (v(&[b"J", &list1, b"LPQQQQQ"]), incomplete, 8),
        // List indices that are negative, a bool, a long int.
        (v(&[&list1, b"F", &be(-1), b"LPQ"]), index("-1"), 12),
        (v(&[&list1, b"CLPQQQQ"]), index("of type bool"), 8),
        (v(&[&list1, &nines, b"LPQ"]), index(&format!("{}… (50 digits)", "9".repeat(40))), 62),
        (v(&[b"PQ"]), K::StackUnderflow { opcode: b'P', needed: 3, available: 0 }, 1),
        (v(&[b"B", &be(-1), b"Q"]), K::ChannelRef(-1), 1),
        // An overlong NUL; a code point past U+10FFFF.
        (v(&[&sized(b'N', b"a\xc0\x80"), b"Q"]), K::InvalidUtf8, 7),
        (v(&[&sized(b'S', b"\xf4\x90\x80\x80"), b"Q"]), K::InvalidUtf8, 6),
        (v(&[&too_long, b"Q"]), K::IntTooLong { digits: 4301, limit: 4300 }, 1),
        (v(&[b"LQ", &[b'Q'; 1000]]), K::TrailingBytes { count: 1000 }, 3),
        (v(&[&[b'L'; 10_000], b"Q"]), K::StopStack { len: 10_000 }, 10_001),
    ];
    let fixed = [(b'F', 4), (b'G', 4), (b'D', 8), (b'T', 16)];
    for (op, needed) in fixed.into_iter().chain("K@OEBANMHIS".bytes().map(|op| (op, 4))) {
        cases.push((v(&[&[op, 0]]), K::Truncated { opcode: op, needed, remaining: 1 }, 1));
    }
    for op in "ANMHISK@OE".bytes() {
        let len = i32::MIN;
        cases.push((v(&[&[b'L', op], &be(len), b"Q"]), K::NegativeLength { opcode: op, len }, 2));
    }
    cases
}

#[test]
fn hostile_inputs_fail_with_the_expected_kind_and_offset() {
    for (bytes, kind, offset) in hostile_cases() {
        let (got, took) = timed_loads(&bytes);
        let err = got.expect_err(&format!("{kind:?} decoded"));
        assert_eq!((err.kind(), err.offset()), (&kind, offset), "{err}");
        let prefix = format!("value decode error at byte {offset}: ");
        assert!(err.to_string().starts_with(&prefix), "{err}");
        assert!(took < PER_INPUT, "{kind:?} took {took:?}");
    }
}

/// A value nested `depth` deep that uses every container kind. Dict keys and set members
/// must be hashable (tuples and frozensets only), so the inner half is built of those and
/// sits both in a set and as a dict key; the outer half wraps lists, dict values and tuples.
fn mixed(depth: usize) -> Value {
    let inner = depth / 2;
    let mut h = Value::Tuple(vec![]);
    for d in 1..inner {
        h = match d % 2 {
            0 => Value::Tuple(vec![h, Value::None]),
            _ => Value::FrozenSet(vec![h]),
        };
    }
    let mut v = Value::Tuple(vec![
        Value::Set(vec![h.clone()]),
        Value::Dict(vec![(h, 1.into())]),
    ]);
    for d in inner + 2..depth {
        v = match d % 3 {
            0 => Value::List(vec![v]),
            1 => Value::Dict(vec![(Value::None, v)]),
            _ => Value::Tuple(vec![v, Value::None]),
        };
    }
    v
}

#[test]
fn nesting_limit_counts_every_container_kind() {
    let ok = mixed(MAX_DEPTH);
    let bytes = dumps(&ok).expect("at the limit");
    assert_eq!(loads(&bytes), Ok(ok));
    // One tuple more, by hand (dumps refuses it).
    let over = [&bytes[..bytes.len() - 1], b"@", &be(1), b"Q"].concat();
    let err = loads(&over).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (&K::TooDeep { limit: MAX_DEPTH }, bytes.len() - 1)
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<i128>().prop_map(Value::from),
        any::<f64>().prop_map(Value::Float),
        (any::<f64>(), any::<f64>()).prop_map(|(re, im)| Complex64::new(re, im).into()),
        ".{0,8}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
    ];
    let leaf = leaf.boxed();
    // Dict keys and set members must be hashable in Python: scalars and tuples of them.
    let key = prop_oneof![
        leaf.clone(),
        prop::collection::vec(leaf.clone(), 0..3).prop_map(Value::Tuple)
    ];
    leaf.prop_recursive(4, 48, 5, move |inner| {
        let items = prop::collection::vec(inner.clone(), 0..5);
        prop_oneof![
            items.clone().prop_map(Value::List),
            items.prop_map(Value::Tuple),
            prop::collection::vec(key.clone(), 0..5).prop_map(Value::Set),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(Value::Dict),
        ]
    })
}

/// Fails the case unless `bytes` decode within [`PER_INPUT`], either to an error inside
/// the input or to a value that `dumps` writes back and that re-decodes to the same bytes.
fn check_clean(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (got, took) = timed_loads(bytes);
    prop_assert!(took < PER_INPUT, "took {took:?}");
    match got {
        Err(e) => prop_assert!(e.offset() <= bytes.len(), "{e}"),
        Ok(value) => {
            let again = dumps(&value).expect("a decoded value encodes");
            let back = loads(&again).expect("its encoding decodes");
            prop_assert_eq!(dumps(&back).expect("encodes"), again);
        }
    }
    Ok(())
}

const OPCODES: &[u8] = b"LRCFGHIDTNSMAKJP@OEBQU";

proptest! {
    #[test]
    fn opcode_soup_after_the_version_byte_is_handled_cleanly(
        body in prop::collection::vec(
            prop_oneof![prop::sample::select(OPCODES), Just(0u8), Just(1u8), any::<u8>()],
            0..256,
        ),
    ) {
        check_clean(&v(&[&body]))?;
    }

    /// The same soup after version byte 1, under every load option: the string options
    /// change what `M` and `N` load as, never whether the decoder stays within bounds.
    #[test]
    fn opcode_soup_in_version_one_under_any_options_is_handled_cleanly(
        body in prop::collection::vec(
            prop_oneof![prop::sample::select(OPCODES), Just(0u8), Just(1u8), any::<u8>()],
            0..256,
        ),
        py2 in any::<bool>(),
        py3 in any::<bool>(),
    ) {
        let bytes = [&[FormatVersion::V1.byte()][..], &body].concat();
        let options = LoadOptions::new(py2, py3);
        let t = Instant::now();
        let got = loads_with(&bytes, options);
        prop_assert!(t.elapsed() < PER_INPUT * 20, "took {:?}", t.elapsed());
        match got {
            Err(e) => prop_assert!(e.offset() <= bytes.len(), "{e}"),
            Ok(value) => {
                let again = dumps_with(&value, FormatVersion::V1).expect("a decoded value encodes");
                prop_assert_eq!(loads(&again).map(|b| dumps(&b).expect("encodes")[1..].to_vec()),
                    Ok(again[1..].to_vec()));
            }
        }
    }

    /// A proper prefix reads exactly as the whole input up to the cut, so the only way
    /// it can fail is by running out of bytes.
    #[test]
    fn every_truncation_runs_out_of_input(value in arb_value()) {
        let bytes = dumps(&value).expect("encodes");
        for cut in 0..bytes.len() {
            let (got, took) = timed_loads(&bytes[..cut]);
            prop_assert!(took < PER_INPUT, "cut {cut} took {took:?}");
            let Err(err) = got else {
                return Err(TestCaseError::fail(format!("prefix of {cut} bytes decoded")));
            };
            prop_assert!(err.offset() <= cut, "cut {cut}: {err}");
            let ran_out = matches!(
                err.kind(),
                K::Empty | K::MissingStop | K::Truncated { .. } | K::ListTooLong { .. }
            );
            prop_assert!(ran_out, "cut {cut}: {err}");
        }
    }

    #[test]
    fn single_byte_edits_fail_cleanly_or_round_trip(
        value in arb_value(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = dumps(&value).expect("encodes");
        let i = at.index(bytes.len());
        let mut changed = bytes.clone();
        changed[i] = byte;
        check_clean(&changed)?;
        let mut removed = bytes.clone();
        removed.remove(i);
        check_clean(&removed)?;
        let mut inserted = bytes;
        inserted.insert(i, byte);
        check_clean(&inserted)?;
    }
}
