//! The element types of arrays ([`DType`]), named by numpy's typestrs. A leaf: the
//! header, its problems and the array layer all use it, and it uses none of them.

use std::fmt;

/// An element type a segment can hold, named by its numpy typestr.
///
/// Multi-byte types are little-endian (`<`); one-byte types carry numpy's "not
/// applicable" byte order (`|`). Big-endian typestrs (`>u2`) are not part of layout
/// version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `|b1`, numpy `bool`: one byte, 0 or 1.
    Bool,
    /// `|u1`, `uint8`.
    U8,
    /// `<u2`, `uint16`.
    U16,
    /// `<u4`, `uint32`.
    U32,
    /// `<u8`, `uint64`.
    U64,
    /// `|i1`, `int8`.
    I8,
    /// `<i2`, `int16`.
    I16,
    /// `<i4`, `int32`.
    I32,
    /// `<i8`, `int64`.
    I64,
    /// `<f2`, `float16`.
    F16,
    /// `<f4`, `float32`.
    F32,
    /// `<f8`, `float64`.
    F64,
    /// `<c8`, `complex64` (two `f32`).
    C64,
    /// `<c16`, `complex128` (two `f64`).
    C128,
}

impl DType {
    /// Every dtype, in the order of the format's table.
    pub const ALL: [DType; 14] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::C64,
        DType::C128,
    ];

    /// The numpy typestr: `<u2`, `|b1`, `<c16`, ….
    pub fn typestr(self) -> &'static str {
        match self {
            DType::Bool => "|b1",
            DType::U8 => "|u1",
            DType::U16 => "<u2",
            DType::U32 => "<u4",
            DType::U64 => "<u8",
            DType::I8 => "|i1",
            DType::I16 => "<i2",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::F16 => "<f2",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::C64 => "<c8",
            DType::C128 => "<c16",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
        }
    }

    /// The dtype with this exact typestr, if layout version 1 knows it.
    pub fn from_typestr(typestr: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.typestr() == typestr)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.typestr())
    }
}
