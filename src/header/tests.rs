//! Header codec tests: edge-case tables, golden files, property tests.

use proptest::prelude::*;

use super::golden::goldens;
use super::*;
use crate::codec::dumps;
use crate::value::Value;

pub(super) fn fields(layout: Layout, meta: Meta, data_len: u64) -> HeaderFields {
    HeaderFields {
        layout,
        meta,
        header_len: PAGE as u32,
        data_len,
        creator_pid: 4242,
        creator_start: 123456,
        generation: 7,
        state: 0,
        owner_pid: 4242,
        pool_slot: false,
    }
}

fn c_fields(dtype: DType, shape: &[usize]) -> HeaderFields {
    let layout = Layout::c_order(dtype, shape).unwrap();
    let n = layout.nbytes() as u64;
    fields(layout, Meta::default(), n)
}

/// Encodes and stamps the version, as a creator does.
pub(super) fn stamped(f: &HeaderFields) -> Vec<u8> {
    let mut b = encode_header(f).unwrap();
    b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
    b
}

pub(super) fn file_size(f: &HeaderFields) -> u64 {
    (u64::from(f.header_len) + f.data_len).next_multiple_of(PAGE as u64)
}

fn parse(b: &[u8]) -> std::result::Result<HeaderFields, SegmentProblem> {
    parse_header(b, u64::MAX)
}

fn put(b: &mut [u8], off: usize, bytes: &[u8]) {
    b[off..off + bytes.len()].copy_from_slice(bytes);
}

pub(super) fn five_d_meta() -> Meta {
    Meta {
        dims: Some(["t", "z", "c", "y", "x"].map(String::from).to_vec()),
        scale: Some(vec![1.0, 0.5, 1.0, 0.1, 0.1]),
        units: Some(["s", "um", "", "um", "um"].map(String::from).to_vec()),
        channel_names: Some(vec!["gfp".into()]),
        name: Some("stack".into()),
        attrs: vec![
            ("objective".into(), Value::from("60x")),
            ("na".into(), Value::Float(1.4)),
        ],
    }
}

#[test]
fn every_dtype_round_trips() {
    for dtype in DType::ALL {
        assert_eq!(DType::from_typestr(dtype.typestr()), Some(dtype));
        assert_eq!(dtype.to_string(), dtype.typestr());
        let f = c_fields(dtype, &[3, 2]);
        let back = parse(&stamped(&f)).unwrap();
        assert_eq!(back, f, "{dtype}");
        assert_eq!(
            back.layout.strides,
            vec![2 * dtype.itemsize(), dtype.itemsize()]
        );
    }
}

#[test]
fn typestrs_outside_the_table_are_refused() {
    for bad in [
        ">u2",
        "<u3",
        "u2",
        "<U4",
        "|O",
        "<b1",
        "|u2",
        "",
        "<c16 ",
        "<f8\u{0}x",
    ] {
        assert_eq!(DType::from_typestr(bad), None, "{bad:?}");
    }
    let mut b = stamped(&c_fields(DType::U16, &[4]));
    put(&mut b, OFF_DTYPE, b">u2");
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::DType {
            found: ">u2".into()
        })
    );
    // Bytes after the first NUL must be NUL too.
    put(&mut b, OFF_DTYPE, b"<u2\0x");
    assert!(matches!(parse(&b), Err(SegmentProblem::DType { .. })));
    put(&mut b, OFF_DTYPE, &[0xff; 16]);
    assert!(matches!(parse(&b), Err(SegmentProblem::DType { .. })));
}

#[test]
fn zero_d_array_has_one_element_and_both_flags() {
    let f = c_fields(DType::Bool, &[]);
    assert_eq!(f.layout.nbytes(), 1);
    assert_eq!(f.layout.extent(), 1);
    assert_eq!(f.layout.flags(), FLAG_C_CONTIGUOUS | FLAG_F_CONTIGUOUS);
    assert_eq!(parse(&stamped(&f)).unwrap(), f);
}

#[test]
fn zero_size_axes_span_nothing() {
    for shape in [&[0][..], &[0, 5], &[5, 0], &[3, 0, 7]] {
        let f = c_fields(DType::U8, shape);
        assert_eq!(f.layout.nbytes(), 0, "{shape:?}");
        assert_eq!(f.layout.extent(), 0, "{shape:?}");
        assert_eq!(f.layout.flags(), 3, "{shape:?}");
        assert_eq!(parse(&stamped(&f)).unwrap(), f);
    }
    // C strides skip empty axes, as numpy's do.
    assert_eq!(
        Layout::c_order(DType::U8, &[5, 0]).unwrap().strides,
        vec![1, 1]
    );
    assert_eq!(
        Layout::c_order(DType::U16, &[2, 0, 3]).unwrap().strides,
        vec![6, 6, 2]
    );
    // An empty array may have any strides, even huge ones.
    let layout = Layout::strided(DType::U8, &[0, 2], &[1 << 40, 1 << 41]).unwrap();
    assert_eq!(layout.extent(), 0);
}

#[test]
fn thirty_two_dimensions_are_the_limit() {
    let f = c_fields(DType::F64, &[2; 32]);
    assert_eq!(parse(&stamped(&f)).unwrap(), f);
    let refused = Layout::c_order(DType::U8, &[1; 33]).unwrap_err();
    assert!(matches!(
        refused.kind(),
        ErrorKind::Segment {
            problem: SegmentProblem::Ndim { found: 33 },
            ..
        }
    ));
    let mut b = stamped(&c_fields(DType::U8, &[4]));
    put(&mut b, OFF_NDIM, &33u32.to_le_bytes());
    assert_eq!(parse(&b), Err(SegmentProblem::Ndim { found: 33 }));
}

use crate::ErrorKind;

#[test]
fn overflowing_sizes_are_refused() {
    let big = usize::MAX / 2;
    for shape in [&[big, 3][..], &[1 << 32, 1 << 32], &[1 << 62, 4]] {
        let e = Layout::c_order(DType::U16, shape).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Segment {
                    problem: SegmentProblem::Overflow { .. },
                    ..
                }
            ),
            "{shape:?}: {e}"
        );
    }
    // In a header: shape product overflows u64.
    let mut b = stamped(&c_fields(DType::U16, &[2, 2]));
    put(&mut b, OFF_SHAPE, &(1u64 << 40).to_le_bytes());
    put(&mut b, OFF_SHAPE + 8, &(1u64 << 40).to_le_bytes());
    assert!(matches!(parse(&b), Err(SegmentProblem::Overflow { .. })));
    // Stride arithmetic overflows u64.
    let mut b = stamped(&c_fields(DType::U16, &[2, 2]));
    put(&mut b, OFF_STRIDES, &i64::MAX.to_le_bytes());
    put(&mut b, OFF_STRIDES + 8, &i64::MAX.to_le_bytes());
    assert!(matches!(parse(&b), Err(SegmentProblem::Overflow { .. })));
}

#[test]
fn strides_beyond_the_data_are_refused() {
    let layout = Layout::strided(DType::U8, &[2, 3], &[3, 1]).unwrap();
    let f = fields(layout, Meta::default(), 5);
    assert_eq!(
        encode_header(&f),
        Err(SegmentProblem::Extent {
            needs: 6,
            data_len: 5
        })
    );
    let mut b = stamped(&c_fields(DType::U16, &[3, 4]));
    put(&mut b, OFF_STRIDES, &9u64.to_le_bytes()); // 2·9 + 3·2 + 2 = 26 > 24
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::Extent {
            needs: 26,
            data_len: 24
        })
    );
}

#[test]
fn negative_strides_are_refused() {
    let mut b = stamped(&c_fields(DType::U16, &[3, 4]));
    put(&mut b, OFF_STRIDES + 8, &(-2i64).to_le_bytes());
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::NegativeStride { axis: 1, found: -2 })
    );
    // A usize stride above i64::MAX would be written as a negative one.
    let layout = Layout {
        dtype: DType::U8,
        shape: vec![1],
        strides: vec![usize::MAX],
    };
    assert!(matches!(
        layout.check(),
        Err(SegmentProblem::NegativeStride { axis: 0, .. })
    ));
}

#[test]
fn unused_shape_and_stride_entries_must_be_zero() {
    let mut b = stamped(&c_fields(DType::U8, &[4]));
    put(&mut b, OFF_SHAPE + 8 * 31, &1u64.to_le_bytes());
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::ShapeUnused {
            axis: 31,
            found: 1,
            ndim: 1
        })
    );
    let mut b = stamped(&c_fields(DType::U8, &[4]));
    put(&mut b, OFF_STRIDES + 8, &(-1i64).to_le_bytes());
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::StridesUnused {
            axis: 1,
            found: -1,
            ndim: 1
        })
    );
}

#[test]
fn stride_count_must_match_ndim() {
    let e = Layout::strided(DType::U8, &[2, 3], &[3]).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::Segment {
            problem: SegmentProblem::StrideCount {
                ndim: 2,
                strides: 1
            },
            ..
        }
    ));
}

#[test]
fn contiguity_follows_numpy() {
    let l =
        |shape: &[usize], strides: &[usize]| Layout::strided(DType::U16, shape, strides).unwrap();
    assert_eq!(l(&[3, 4], &[8, 2]).flags(), FLAG_C_CONTIGUOUS);
    assert_eq!(l(&[3, 4], &[2, 6]).flags(), FLAG_F_CONTIGUOUS);
    assert_eq!(l(&[5], &[2]).flags(), 3);
    assert_eq!(l(&[5], &[4]).flags(), 0);
    // Axes of length 1 do not count, whatever their stride.
    assert_eq!(l(&[1, 4], &[999, 2]).flags(), 3);
    assert_eq!(l(&[3, 1, 4], &[8, 0, 2]).flags(), FLAG_C_CONTIGUOUS);
    assert_eq!(l(&[2, 3], &[12, 4]).flags(), 0);
    assert_eq!(l(&[0, 3], &[12, 4]).flags(), 3);
    assert_eq!(l(&[2, 2], &[0, 0]).flags(), 0);
}

#[test]
fn flags_must_match_the_layout() {
    let mut b = stamped(&c_fields(DType::U16, &[3, 4]));
    put(&mut b, OFF_FLAGS, &3u32.to_le_bytes());
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::Flags {
            found: 3,
            expected: 1
        })
    );
    put(&mut b, OFF_FLAGS, &9u32.to_le_bytes());
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::Flags {
            found: 9,
            expected: 1
        })
    );
    put(&mut b, OFF_FLAGS, &7u32.to_le_bytes());
    assert_eq!(
        parse(&b),
        Err(SegmentProblem::Flags {
            found: 7,
            expected: 5
        })
    );
    // The pool-slot bit beside the right contiguity bits is valid.
    put(&mut b, OFF_FLAGS, &5u32.to_le_bytes());
    assert!(parse(&b).unwrap().pool_slot);
}

#[test]
fn each_fixed_field_is_checked_in_order() {
    let f = c_fields(DType::U16, &[3, 4]);
    let good = stamped(&f);
    let size = file_size(&f);
    let with = |off: usize, bytes: &[u8]| {
        let mut b = good.clone();
        put(&mut b, off, bytes);
        parse_header(&b, size)
    };
    use SegmentProblem as P;
    assert_eq!(
        with(0, b"PXGSEG\0\x01"),
        Err(P::BadMagic {
            found: *b"PXGSEG\0\x01"
        })
    );
    assert_eq!(
        with(OFF_VERSION, &0u32.to_le_bytes()),
        Err(P::NotInitialised)
    );
    assert_eq!(
        with(OFF_VERSION, &2u32.to_le_bytes()),
        Err(P::Version {
            found: 2,
            expected: 1
        })
    );
    assert_eq!(
        with(OFF_HEADER_LEN, &4095u32.to_le_bytes()),
        Err(P::HeaderLen { found: 4095 })
    );
    assert_eq!(
        with(OFF_HEADER_LEN, &0u32.to_le_bytes()),
        Err(P::HeaderLen { found: 0 })
    );
    assert_eq!(
        with(OFF_HEADER_LEN, &6000u32.to_le_bytes()),
        Err(P::HeaderLen { found: 6000 })
    );
    assert_eq!(
        with(OFF_HEADER_LEN, &12288u32.to_le_bytes()),
        Err(P::HeaderBeyondEnd {
            header_len: 12288,
            file_size: size
        })
    );
    assert_eq!(
        with(OFF_META_LEN, &3489u32.to_le_bytes()),
        Err(P::MetaLen {
            meta_len: 3489,
            header_len: 4096
        })
    );
    assert_eq!(
        with(OFF_RESERVED, &1u32.to_le_bytes()),
        Err(P::Reserved { found: 1 })
    );
    assert_eq!(
        with(OFF_DATA_LEN, &4097u64.to_le_bytes()),
        Err(P::DataBeyondEnd {
            header_len: 4096,
            data_len: 4097,
            file_size: size
        })
    );
    assert_eq!(
        with(OFF_DATA_LEN, &u64::MAX.to_le_bytes()),
        Err(P::DataBeyondEnd {
            header_len: 4096,
            data_len: u64::MAX,
            file_size: size
        })
    );
    assert_eq!(
        with(OFF_ITEMSIZE, &4u32.to_le_bytes()),
        Err(P::ItemSize {
            found: 4,
            expected: 2,
            dtype: DType::U16
        })
    );
    assert_eq!(
        with(OFF_NBYTES, &25u64.to_le_bytes()),
        Err(P::NBytes {
            found: 25,
            expected: 24
        })
    );
    assert_eq!(
        with(OFF_SHAPE, &4u64.to_le_bytes()),
        Err(P::NBytes {
            found: 24,
            expected: 32
        })
    );
    // The advisory and identity fields take any value.
    for off in [OFF_CREATOR_PID, OFF_GENERATION, OFF_STATE, OFF_OWNER_PID] {
        assert!(with(off, &u32::MAX.to_le_bytes()).is_ok());
    }
}

#[test]
fn short_input_is_refused() {
    let b = stamped(&c_fields(DType::U8, &[4]));
    assert_eq!(
        parse_header(&b[..100], 8192),
        Err(SegmentProblem::TooSmall {
            size: 100,
            needed: 4096
        })
    );
    assert_eq!(
        parse_header(&b, 100),
        Err(SegmentProblem::TooSmall {
            size: 100,
            needed: 4096
        })
    );
    assert_eq!(
        parse_header(&[], 0),
        Err(SegmentProblem::TooSmall {
            size: 0,
            needed: 4096
        })
    );
    // header_len says two pages, the caller copied one.
    let mut f = c_fields(DType::U8, &[4]);
    f.header_len = 8192;
    let b = stamped(&f);
    assert_eq!(
        parse_header(&b[..4096], 16384),
        Err(SegmentProblem::TooSmall {
            size: 4096,
            needed: 8192
        })
    );
}

#[test]
fn metadata_of_the_wrong_types_is_refused() {
    let cases: Vec<(Value, &str)> = vec![
        (Value::List(vec![]), "expected a dict"),
        (
            Value::dict([("dims", Value::from(vec!["y"]))]),
            "dims has 1 entries, expected ndim 2",
        ),
        (
            Value::dict([("dims", Value::from(vec![1, 2]))]),
            "dims[0] is a int, expected str",
        ),
        (
            Value::dict([("dims", Value::from("yx"))]),
            "dims is a str, expected a list",
        ),
        (
            Value::dict([("scale", Value::from(vec!["a", "b"]))]),
            "scale[0] is a str",
        ),
        (
            Value::dict([("units", Value::from(vec!["um"]))]),
            "units has 1 entries",
        ),
        (
            Value::dict([("channel_names", Value::from(3))]),
            "channel_names is a int",
        ),
        (Value::dict([("name", Value::from(3))]), "name is a int"),
        (
            Value::dict([("attrs", Value::from(vec![1]))]),
            "attrs is a list",
        ),
        (
            Value::Dict(vec![(Value::from(1), Value::None)]),
            "has a int key",
        ),
        (
            Value::dict([("attrs", Value::Dict(vec![(Value::from(1), Value::None)]))]),
            "attrs has a int key",
        ),
        (
            Value::Dict(vec![
                (Value::from("name"), Value::from("a")),
                (Value::from("name"), Value::from("b")),
            ]),
            "repeats the key",
        ),
        (
            Value::dict([(
                "attrs",
                Value::dict([(
                    "ref",
                    Value::List(vec![Value::Array(crate::ArrayRef::new(
                        "/pxg-1-0000000000000000".into(),
                        0,
                        crate::Access::Shared,
                    ))]),
                )]),
            )]),
            "holds an array reference",
        ),
        (
            Value::dict([(
                "future_key",
                Value::Array(crate::ArrayRef::new(
                    "/pxg-1-0000000000000000".into(),
                    0,
                    crate::Access::Moved,
                )),
            )]),
            "holds an array reference",
        ),
    ];
    for (value, expected) in cases {
        match Meta::parse(&value, 2) {
            Err(SegmentProblem::Meta { reason }) => {
                assert!(reason.contains(expected), "{reason} / {expected}")
            }
            other => panic!("{value}: {other:?}"),
        }
    }
}

#[test]
fn metadata_readers_are_tolerant_where_harmless() {
    let value = Value::dict([
        ("dims", Value::Tuple(vec!["y".into(), "x".into()])),
        ("scale", Value::List(vec![Value::Int(2), Value::Float(0.5)])),
        ("name", Value::None),
        ("future_key", Value::from(vec![1, 2, 3])),
    ]);
    let meta = Meta::parse(&value, 2).unwrap();
    assert_eq!(meta.dims, Some(vec!["y".to_string(), "x".to_string()]));
    assert_eq!(meta.scale, Some(vec![2.0, 0.5]));
    assert_eq!(meta.name, None);
}

#[test]
fn metadata_in_a_header_is_checked() {
    let f = c_fields(DType::U8, &[4]);
    let mut b = stamped(&f);
    // Not a value: garbage where the block should be.
    put(&mut b, FIXED_LEN, b"\x02Z");
    assert!(matches!(parse(&b), Err(SegmentProblem::Meta { .. })));
    // A value, but not a dict.
    let block = dumps(&Value::from(vec![1])).unwrap();
    put(&mut b, FIXED_LEN, &block);
    put(&mut b, OFF_META_LEN, &(block.len() as u32).to_le_bytes());
    assert!(matches!(parse(&b), Err(SegmentProblem::Meta { reason }) if reason.contains("dict")));
    // An empty block is not a value.
    put(&mut b, OFF_META_LEN, &0u32.to_le_bytes());
    assert!(matches!(parse(&b), Err(SegmentProblem::Meta { .. })));
}

#[test]
fn metadata_that_does_not_fit_is_refused_by_the_encoder() {
    let meta = Meta {
        name: Some("x".repeat(4000)),
        ..Meta::default()
    };
    let mut f = c_fields(DType::U8, &[4]);
    f.meta = meta.clone();
    assert!(matches!(
        encode_header(&f),
        Err(SegmentProblem::MetaLen {
            header_len: 4096,
            ..
        })
    ));
    let needed = meta.encode(1).unwrap().len();
    f.header_len = header_len_for(needed).unwrap();
    assert_eq!(f.header_len, 8192);
    assert_eq!(parse_header(&stamped(&f), 8192 + 4096).unwrap(), f);
}

#[test]
fn meta_to_value_keeps_key_order_and_omits_absent_keys() {
    assert_eq!(dumps(&Meta::default().to_value()).unwrap(), b"\x02JQ");
    let keys: Vec<String> = five_d_meta()
        .to_value()
        .as_dict()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["dims", "scale", "units", "channel_names", "name", "attrs"]
    );
    let back = Meta::from_value(&five_d_meta().to_value(), 5).unwrap();
    assert_eq!(back, five_d_meta());
}

// ---------------------------------------------------------------------------------
// Properties.

fn arb_layout() -> impl Strategy<Value = Layout> {
    (
        0..DType::ALL.len(),
        prop::collection::vec((0usize..6, 0usize..64), 0..=MAX_NDIM),
    )
        .prop_map(|(d, axes)| Layout {
            dtype: DType::ALL[d],
            shape: axes.iter().map(|a| a.0).collect(),
            strides: axes.iter().map(|a| a.1).collect(),
        })
}

fn arb_meta(ndim: usize) -> impl Strategy<Value = Meta> {
    let word = "[a-zµ ]{0,6}";
    (
        prop::option::of(prop::collection::vec(word, ndim)),
        prop::option::of(prop::collection::vec(-1e6f64..1e6, ndim)),
        prop::option::of(prop::collection::vec(word, ndim)),
        prop::option::of(prop::collection::vec(word, 0..4)),
        prop::option::of(word),
        prop::collection::btree_map("[a-z]{1,5}", any::<i64>(), 0..4),
    )
        .prop_map(|(dims, scale, units, channel_names, name, attrs)| Meta {
            dims,
            scale,
            units,
            channel_names,
            name,
            attrs: attrs.into_iter().map(|(k, v)| (k, Value::Int(v))).collect(),
        })
}

proptest! {
    #[test]
    fn encode_then_parse_round_trips(
        (layout, meta) in arb_layout().prop_flat_map(|l| { let n = l.ndim(); (Just(l), arb_meta(n)) }),
        slack in 0u64..100,
        creator_pid: u32, creator_start: u64, generation: u64, state: u32, owner_pid: u32,
        pool_slot: bool,
    ) {
        let data_len = layout.extent() as u64 + slack;
        let meta_len = meta.encode(layout.ndim()).unwrap().len();
        let f = HeaderFields {
            header_len: header_len_for(meta_len).unwrap(),
            layout, meta, data_len, creator_pid, creator_start, generation, state, owner_pid,
            pool_slot,
        };
        let b = stamped(&f);
        prop_assert_eq!(b.len(), f.header_len as usize);
        prop_assert_eq!(parse_header(&b, file_size(&f)).unwrap(), f);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..5000), size: u64) {
        let _ = parse_header(&bytes, size);
    }

    #[test]
    fn parse_never_panics_on_mutated_headers(
        edits in prop::collection::vec((0usize..PAGE, any::<u8>()), 1..8),
        which in 0usize..5,
    ) {
        let g = &goldens()[which];
        let mut b = stamped(&g.fields);
        for (off, byte) in edits {
            b[off] = byte;
        }
        if let Ok(f) = parse_header(&b, file_size(&g.fields)) {
            // Whatever parses describes elements inside its data area.
            prop_assert!(f.layout.extent() as u64 <= f.data_len);
        }
    }

    #[test]
    fn layouts_agree_with_a_naive_oracle(
        axes in prop::collection::vec((0usize..4, 0usize..40), 0..6),
        d in 0..DType::ALL.len(),
    ) {
        let dtype = DType::ALL[d];
        let (shape, strides): (Vec<usize>, Vec<usize>) = axes.into_iter().unzip();
        let l = Layout::strided(dtype, &shape, &strides).unwrap();
        let n: usize = shape.iter().product();
        prop_assert_eq!(l.size(), n);
        prop_assert_eq!(l.nbytes(), n * dtype.itemsize());
        // Byte offset of the k-th element in C order and in Fortran order.
        let offset = |k: usize, c_order: bool| {
            let mut order: Vec<usize> = (0..shape.len()).collect();
            if c_order {
                order.reverse();
            }
            let (mut rem, mut off) = (k, 0);
            for axis in order {
                off += rem % shape[axis] * strides[axis];
                rem /= shape[axis];
            }
            off
        };
        let max = (0..n).map(|k| offset(k, true)).max();
        prop_assert_eq!(l.extent(), max.map_or(0, |m| m + dtype.itemsize()));
        let dense = |c| (0..n).all(|k| offset(k, c) == k * dtype.itemsize());
        prop_assert_eq!(l.is_c_contiguous(), dense(true));
        prop_assert_eq!(l.is_f_contiguous(), dense(false));
        let c = Layout::c_order(dtype, &shape).unwrap();
        prop_assert!(c.is_c_contiguous());
        prop_assert_eq!(c.extent(), c.nbytes());
    }
}
