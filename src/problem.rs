//! [`SegmentProblem`]: what is wrong with a segment.

use nix::errno::Errno;

use crate::dtype::DType;

/// The first eight bytes of every segment (docs/SEGMENT_FORMAT.md §4).
pub(crate) const MAGIC: [u8; 8] = *b"PXGSEG\0\0";

/// What is wrong with a segment, or with an operation on one.
///
/// Carried by [`ErrorKind::Segment`](crate::ErrorKind::Segment) together with the
/// segment's name. The header variants follow the validation order of
/// `docs/SEGMENT_FORMAT.md`; each check has its own variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentProblem {
    /// No segment has this name.
    #[error("no such segment")]
    NotFound,
    /// A segment with this name exists already.
    #[error("a segment with this name exists already")]
    Exists,
    /// The name is not a pixgate segment name.
    #[error("invalid name: {reason}")]
    NameInvalid {
        /// What is wrong with it.
        reason: String,
    },
    /// The shared-memory file system has no room for the segment.
    #[error("no space left to reserve {needed} bytes")]
    NoSpace {
        /// Bytes the segment needs.
        needed: u64,
    },
    /// This process cannot open another descriptor (its limit, `RLIMIT_NOFILE`, or the
    /// system's is reached); an anonymous segment needs one while it lives.
    #[error(
        "no descriptor left for an anonymous segment ({message}); raise the limit (ulimit -n) or use the named transport"
    )]
    Descriptors {
        /// The system's message.
        message: String,
    },
    /// A descriptor from a peer is not sealed against shrinking and growing, so the
    /// object could shrink under a mapping.
    #[error("descriptor not sealed against shrinking and growing (seals {seals:#x})")]
    NotSealed {
        /// The seals it has.
        seals: u32,
    },
    /// A descriptor from a peer is read-only, and the reference needs write access.
    #[error("descriptor opened read-only for a writable reference")]
    ReadOnlyDescriptor,
    /// A reference's offset does not leave a page of the object from there, or is not a
    /// multiple of the page size.
    #[error("offset {offset} in an object of {size} bytes")]
    Offset {
        /// The reference's offset.
        offset: u64,
        /// The object's size.
        size: u64,
    },
    /// An operating-system call failed.
    #[error("{call} failed: {message}")]
    Os {
        /// The call: `shm_open`, `mmap`, ….
        call: &'static str,
        /// The system's message.
        message: String,
    },
    /// The segment belongs to another user.
    #[error("owned by uid {uid}, expected uid {expected}")]
    Owner {
        /// The segment's owner.
        uid: u32,
        /// The caller's effective uid.
        expected: u32,
    },
    /// The segment's permissions let others in, or it is not a regular file.
    #[error("mode {mode:#o}, expected a regular file with no group or other access")]
    Mode {
        /// `st_mode` as `fstat` reports it.
        mode: u32,
    },
    /// The segment or the bytes given are smaller than the header needs.
    #[error("{size} bytes, expected at least {needed}")]
    TooSmall {
        /// Bytes present.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The first eight bytes are not `PXGSEG\0\0`.
    #[error("magic {}, expected {}", hex(.found), hex(&MAGIC))]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The version word is 0: the creator has not finished writing the header.
    #[error("header not initialised (version 0)")]
    NotInitialised,
    /// The header changed while it was being read (its metadata was being rewritten).
    #[error("header changed while it was read")]
    HeaderChanged,
    /// The layout version is not one this code reads.
    #[error("header version {found}, expected {expected}")]
    Version {
        /// The version found.
        found: u32,
        /// The version supported.
        expected: u32,
    },
    /// `header_len` is not a multiple of 4096 of at least 4096.
    #[error("header_len {found}, expected a multiple of 4096 and at least 4096")]
    HeaderLen {
        /// The value found.
        found: u32,
    },
    /// `header_len` reaches past the end of the file.
    #[error("header_len {header_len} exceeds the segment size {file_size}")]
    HeaderBeyondEnd {
        /// The header's length.
        header_len: u32,
        /// The segment's size.
        file_size: u64,
    },
    /// The metadata block does not fit in the header.
    #[error(
        "metadata of {meta_len} bytes does not fit a header of {header_len} bytes (608 + metadata)"
    )]
    MetaLen {
        /// The metadata block's length.
        meta_len: u64,
        /// The header's length.
        header_len: u32,
    },
    /// The reserved word is not 0.
    #[error("reserved word {found:#x}, expected 0")]
    Reserved {
        /// The value found.
        found: u32,
    },
    /// The data area reaches past the end of the file.
    #[error("data of {data_len} bytes at offset {header_len} exceeds the segment size {file_size}")]
    DataBeyondEnd {
        /// The header's length (the data's offset).
        header_len: u32,
        /// The data area's length.
        data_len: u64,
        /// The segment's size.
        file_size: u64,
    },
    /// The dtype field is not a typestr that layout version 1 knows.
    #[error(
        "dtype {found:?} is not supported, expected one of |b1 |u1 <u2 <u4 <u8 |i1 <i2 <i4 <i8 <f2 <f4 <f8 <c8 <c16"
    )]
    DType {
        /// The field's bytes (escaped, trailing NULs removed).
        found: String,
    },
    /// The itemsize field does not match the dtype.
    #[error("itemsize {found}, expected {expected} for dtype {dtype}")]
    ItemSize {
        /// The value found.
        found: u32,
        /// The dtype's itemsize.
        expected: u32,
        /// The dtype.
        dtype: DType,
    },
    /// More dimensions than [`MAX_NDIM`](crate::MAX_NDIM).
    #[error("ndim {found}, expected at most 32")]
    Ndim {
        /// The number found.
        found: u64,
    },
    /// A layout's strides do not match its shape in number.
    #[error("{strides} strides for ndim {ndim}")]
    StrideCount {
        /// The number of axes.
        ndim: usize,
        /// The number of strides.
        strides: usize,
    },
    /// A shape entry past `ndim` is not 0.
    #[error("shape entry {axis} is {found}, expected 0 past ndim {ndim}")]
    ShapeUnused {
        /// The entry's index.
        axis: usize,
        /// Its value.
        found: u64,
        /// The header's ndim.
        ndim: u32,
    },
    /// A stride entry past `ndim` is not 0.
    #[error("stride entry {axis} is {found}, expected 0 past ndim {ndim}")]
    StridesUnused {
        /// The entry's index.
        axis: usize,
        /// Its value.
        found: i64,
        /// The header's ndim.
        ndim: u32,
    },
    /// A stride is negative, which layout version 1 does not allow.
    #[error("stride {axis} is {found}, expected a non-negative stride")]
    NegativeStride {
        /// The axis.
        axis: usize,
        /// The stride.
        found: i64,
    },
    /// Size arithmetic overflows 64 bits.
    #[error("{what} overflows 64 bits")]
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// The nbytes field does not equal itemsize × Π shape.
    #[error("nbytes {found}, expected {expected} (itemsize × shape)")]
    NBytes {
        /// The value found.
        found: u64,
        /// itemsize × Π shape.
        expected: u64,
    },
    /// A size does not fit this host's address space.
    #[error("{what} of {value} does not fit this host's address space")]
    Unaddressable {
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The elements reach past the data area.
    #[error("elements span {needs} bytes, the data area holds {data_len}")]
    Extent {
        /// Bytes the elements span.
        needs: u64,
        /// The data area's length.
        data_len: u64,
    },
    /// The flags field does not match the contiguity of shape and strides.
    #[error("flags {found:#x}, expected {expected:#x} for this shape and strides")]
    Flags {
        /// The value found.
        found: u32,
        /// The value computed from shape and strides.
        expected: u32,
    },
    /// The metadata block is malformed.
    #[error("metadata {reason}")]
    Meta {
        /// What is wrong with it.
        reason: String,
    },
    /// A write was asked of a segment mapped read-only.
    #[error("mapped read-only")]
    ReadOnly,
    /// A prefix given to [`inspect`](crate::segment::inspect) matches several
    /// segments.
    #[error("prefix matches {} segments: {}", .candidates.len(), some(.candidates))]
    Ambiguous {
        /// The keys of the segments it matches, sorted.
        candidates: Vec<String>,
    },
}

/// The first few of `items`, comma-separated, and how many more there are.
fn some(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = items
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn os(call: &'static str, errno: Errno) -> SegmentProblem {
    match errno {
        Errno::ENOENT => SegmentProblem::NotFound,
        Errno::EEXIST => SegmentProblem::Exists,
        _ => SegmentProblem::Os {
            call,
            message: errno.desc().to_string(),
        },
    }
}

pub(crate) fn io(call: &'static str, err: std::io::Error) -> SegmentProblem {
    match err.raw_os_error() {
        Some(code) => os(call, Errno::from_raw(code)),
        None => SegmentProblem::Os {
            call,
            message: err.to_string(),
        },
    }
}
