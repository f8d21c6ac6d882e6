//! The segment header of `docs/SEGMENT_FORMAT.md`, layout version 1: [`DType`],
//! [`Layout`], [`Meta`], and the byte codec ([`encode_header`], [`parse_header`]).
//!
//! Everything here is safe code over plain byte buffers. [`parse_header`] reads a
//! private copy of the header, checks every size and count before using it, and turns
//! every malformed input into a [`SegmentProblem`]; it never panics on input. The
//! mapping itself belongs to [`crate::segment`].

use crate::codec::loads;
use crate::error::Result;
use crate::problem::SegmentProblem;

pub use crate::dtype::DType;

mod meta;

pub use meta::Meta;

/// The first eight bytes of every segment: `PXGSEG\0\0` (defined with the problems,
/// whose messages name it).
pub(crate) use crate::problem::MAGIC;
/// The layout version this code writes and reads.
pub(crate) const VERSION: u32 = 1;
/// The unit of `header_len` and of the segment's size.
pub(crate) const PAGE: usize = 4096;
/// The most dimensions an array may have.
pub const MAX_NDIM: usize = 32;
/// Bytes of the fixed part of the header; the metadata block starts here.
pub(crate) const FIXED_LEN: usize = 608;

pub(crate) const OFF_VERSION: usize = 8;
pub(crate) const OFF_HEADER_LEN: usize = 12;
const OFF_DATA_LEN: usize = 16;
const OFF_NBYTES: usize = 24;
const OFF_DTYPE: usize = 32;
const DTYPE_LEN: usize = 16;
const OFF_ITEMSIZE: usize = 48;
const OFF_NDIM: usize = 52;
const OFF_FLAGS: usize = 56;
pub(crate) const OFF_CREATOR_PID: usize = 60;
pub(crate) const OFF_CREATOR_START: usize = 64;
pub(crate) const OFF_GENERATION: usize = 72;
pub(crate) const OFF_STATE: usize = 80;
pub(crate) const OFF_OWNER_PID: usize = 84;
pub(crate) const OFF_META_LEN: usize = 88;
const OFF_RESERVED: usize = 92;
const OFF_SHAPE: usize = 96;
const OFF_STRIDES: usize = 352;

/// Flag bit: the array is C-contiguous (row-major, numpy's definition).
pub const FLAG_C_CONTIGUOUS: u32 = 1;
/// Flag bit: the array is F-contiguous (column-major, numpy's definition).
pub const FLAG_F_CONTIGUOUS: u32 = 2;
/// Flag bit: the segment is a slot of a pool. Its layout is rewritten (and its
/// generation bumped) each time the slot is reused; receivers map it populated and
/// keep it mapped.
pub const FLAG_POOL_SLOT: u32 = 4;

/// Where an array's elements lie: dtype, shape, and byte strides from the start of the
/// data area.
///
/// The fields are public; [`Layout::c_order`] and [`Layout::strided`] build a layout
/// and check it, and segment creation checks it again. The size methods assume a
/// checked layout: on one whose sizes overflow they saturate at `usize::MAX`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// The element type.
    pub dtype: DType,
    /// Elements along each axis; `ndim` is its length.
    pub shape: Vec<usize>,
    /// Bytes between neighbours along each axis; as long as `shape`.
    pub strides: Vec<usize>,
}

impl Layout {
    /// A C-ordered (row-major) layout, the default for new arrays.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment) when `shape` has more than
    /// [`MAX_NDIM`] axes or its byte size or strides overflow 64 bits.
    pub fn c_order(dtype: DType, shape: &[usize]) -> Result<Layout> {
        c_strides(dtype, shape)
            .map(|strides| Layout {
                dtype,
                shape: shape.to_vec(),
                strides,
            })
            .and_then(|layout| layout.check().map(|_| layout))
            .map_err(|p| p.at(NEW))
    }

    /// A layout with explicit byte strides (non-negative, any value numpy allows).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Segment`](crate::ErrorKind::Segment) when `shape` and `strides`
    /// differ in length, there are more than [`MAX_NDIM`] axes, or a size overflows.
    pub fn strided(dtype: DType, shape: &[usize], strides: &[usize]) -> Result<Layout> {
        let layout = Layout {
            dtype,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        };
        layout.check().map_err(|p| p.at(NEW))?;
        Ok(layout)
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements (1 for a 0-d array, 0 when an axis is 0).
    pub fn size(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Bytes the elements occupy: itemsize × number of elements.
    pub fn nbytes(&self) -> usize {
        self.size().saturating_mul(self.dtype.itemsize())
    }

    /// Bytes from the start of the data area that the elements span: 0 when an axis is
    /// 0, else the offset of the last element plus the itemsize.
    pub fn extent(&self) -> usize {
        extent(
            self.dtype.itemsize() as u64,
            &u64s(&self.shape),
            &u64s(&self.strides),
        )
        .and_then(|e| usize::try_from(e).ok())
        .unwrap_or(usize::MAX)
    }

    /// True when the elements are laid out in C order without gaps (numpy's rule: axes
    /// of length 1 do not count, and an empty array is contiguous).
    pub fn is_c_contiguous(&self) -> bool {
        contiguous(self.dtype.itemsize(), &self.shape, &self.strides, true)
    }

    /// True when the elements are laid out in Fortran order without gaps.
    pub fn is_f_contiguous(&self) -> bool {
        contiguous(self.dtype.itemsize(), &self.shape, &self.strides, false)
    }

    /// The header's flag word: [`FLAG_C_CONTIGUOUS`] | [`FLAG_F_CONTIGUOUS`] as they
    /// apply.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.is_c_contiguous() {
            flags |= FLAG_C_CONTIGUOUS;
        }
        if self.is_f_contiguous() {
            flags |= FLAG_F_CONTIGUOUS;
        }
        flags
    }

    /// Checks ndim, the stride count and the size arithmetic; returns (nbytes, extent).
    pub(crate) fn check(&self) -> std::result::Result<(u64, u64), SegmentProblem> {
        let ndim = self.shape.len();
        if ndim > MAX_NDIM {
            return Err(SegmentProblem::Ndim { found: ndim as u64 });
        }
        if self.strides.len() != ndim {
            return Err(SegmentProblem::StrideCount {
                ndim,
                strides: self.strides.len(),
            });
        }
        let itemsize = self.dtype.itemsize() as u64;
        let (shape, strides) = (u64s(&self.shape), u64s(&self.strides));
        if let Some((axis, &s)) = strides
            .iter()
            .enumerate()
            .find(|(_, s)| **s > i64::MAX as u64)
        {
            return Err(SegmentProblem::NegativeStride {
                axis,
                found: s as i64,
            });
        }
        let nbytes = nbytes(itemsize, &shape).ok_or(SegmentProblem::Overflow {
            what: "itemsize × shape",
        })?;
        let extent = extent(itemsize, &shape, &strides).ok_or(SegmentProblem::Overflow {
            what: "the extent of shape × strides",
        })?;
        usize::try_from(nbytes.max(extent)).map_err(|_| SegmentProblem::Unaddressable {
            what: "the array",
            value: nbytes.max(extent),
        })?;
        Ok((nbytes, extent))
    }
}

/// The segment name used in errors about a layout or metadata not yet in a segment.
pub(crate) const NEW: &str = "(new)";

fn u64s(v: &[usize]) -> Vec<u64> {
    v.iter().map(|&x| x as u64).collect()
}

fn c_strides(dtype: DType, shape: &[usize]) -> std::result::Result<Vec<usize>, SegmentProblem> {
    if shape.len() > MAX_NDIM {
        return Err(SegmentProblem::Ndim {
            found: shape.len() as u64,
        });
    }
    let mut strides = vec![0; shape.len()];
    let mut step = dtype.itemsize();
    for (axis, &len) in shape.iter().enumerate().rev() {
        strides[axis] = step;
        // As numpy: an empty axis does not shrink the strides of the axes before it.
        step = step
            .checked_mul(len.max(1))
            .ok_or(SegmentProblem::Overflow {
                what: "the C-order strides",
            })?;
    }
    Ok(strides)
}

/// itemsize × Π shape, or None on overflow.
fn nbytes(itemsize: u64, shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(itemsize, |n, &d| n.checked_mul(d))
}

/// Bytes spanned from offset 0: 0 if an axis is empty, else Σ (shape−1)·stride +
/// itemsize; None on overflow.
fn extent(itemsize: u64, shape: &[u64], strides: &[u64]) -> Option<u64> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape
        .iter()
        .zip(strides)
        .try_fold(itemsize, |acc, (&len, &stride)| {
            acc.checked_add((len - 1).checked_mul(stride)?)
        })
}

/// numpy's contiguity rule (relaxed strides): axes of length 1 are skipped; an array
/// with an empty axis is contiguous.
fn contiguous(itemsize: usize, shape: &[usize], strides: &[usize], c_order: bool) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = itemsize;
    let mut check = |axis: usize| {
        let len = shape[axis];
        if len != 1 && strides.get(axis) != Some(&expected) {
            return false;
        }
        expected = expected.saturating_mul(len);
        true
    };
    if c_order {
        (0..shape.len()).rev().all(&mut check)
    } else {
        (0..shape.len()).all(&mut check)
    }
}

/// Every field of a header, as written by [`encode_header`] and read by
/// [`parse_header`]. `generation`, `state` and `owner_pid` are the values at the time of
/// parsing; the live values are atomics in the mapping.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeaderFields {
    pub(crate) layout: Layout,
    pub(crate) meta: Meta,
    pub(crate) header_len: u32,
    pub(crate) data_len: u64,
    pub(crate) creator_pid: u32,
    pub(crate) creator_start: u64,
    pub(crate) generation: u64,
    pub(crate) state: u32,
    pub(crate) owner_pid: u32,
    /// A pool's slot ([`FLAG_POOL_SLOT`]).
    pub(crate) pool_slot: bool,
}

impl HeaderFields {
    /// The flags word: contiguity, and whether this is a pool slot.
    pub(crate) fn flags(&self) -> u32 {
        self.layout.flags() | if self.pool_slot { FLAG_POOL_SLOT } else { 0 }
    }
}

/// The fixed header fields as stored, decoded without validation: what `pixgate inspect`
/// shows, right or wrong. Validation happens only when a segment is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHeader {
    /// The magic bytes.
    pub magic: [u8; 8],
    /// The layout version word.
    pub version: u32,
    /// Bytes before the data.
    pub header_len: u32,
    /// Bytes of the data area.
    pub data_len: u64,
    /// Bytes the elements occupy.
    pub nbytes: u64,
    /// The dtype field without its NUL padding.
    pub dtype: Vec<u8>,
    /// Bytes per element.
    pub itemsize: u32,
    /// Number of axes.
    pub ndim: u32,
    /// The flags word.
    pub flags: u32,
    /// The creating process.
    pub creator_pid: u32,
    /// The creator's start time (clock ticks after boot; 0 unknown).
    pub creator_start: u64,
    /// The generation counter.
    pub generation: u64,
    /// The advisory state word.
    pub state: u32,
    /// The process that will unlink it.
    pub owner_pid: u32,
    /// Bytes of the metadata block.
    pub meta_len: u32,
    /// The reserved word.
    pub reserved: u32,
    /// The first `min(ndim, 32)` shape entries.
    pub shape: Vec<u64>,
    /// The first `min(ndim, 32)` stride entries.
    pub strides: Vec<i64>,
}

impl RawHeader {
    /// Whether the magic bytes are pixgate's.
    pub fn magic_ok(&self) -> bool {
        self.magic == MAGIC
    }

    /// Decodes the fixed part of a header copy; `None` when it is shorter than that.
    pub(crate) fn decode(b: &[u8]) -> Option<RawHeader> {
        let b = b.get(..FIXED_LEN)?;
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let ndim = u32_at(OFF_NDIM);
        let n = (ndim as usize).min(MAX_NDIM);
        let dtype = &b[OFF_DTYPE..OFF_DTYPE + DTYPE_LEN];
        let end = dtype.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        Some(RawHeader {
            magic: b[..8].try_into().expect("8 bytes"),
            version: u32_at(OFF_VERSION),
            header_len: u32_at(OFF_HEADER_LEN),
            data_len: u64_at(OFF_DATA_LEN),
            nbytes: u64_at(OFF_NBYTES),
            dtype: dtype[..end].to_vec(),
            itemsize: u32_at(OFF_ITEMSIZE),
            ndim,
            flags: u32_at(OFF_FLAGS),
            creator_pid: u32_at(OFF_CREATOR_PID),
            creator_start: u64_at(OFF_CREATOR_START),
            generation: u64_at(OFF_GENERATION),
            state: u32_at(OFF_STATE),
            owner_pid: u32_at(OFF_OWNER_PID),
            meta_len: u32_at(OFF_META_LEN),
            reserved: u32_at(OFF_RESERVED),
            shape: (0..n).map(|i| u64_at(OFF_SHAPE + 8 * i)).collect(),
            strides: (0..n).map(|i| u64_at(OFF_STRIDES + 8 * i) as i64).collect(),
        })
    }
}

/// The smallest valid `header_len` for a metadata block of `meta_len` bytes.
pub(crate) fn header_len_for(meta_len: usize) -> std::result::Result<u32, SegmentProblem> {
    FIXED_LEN
        .checked_add(meta_len)
        .and_then(|n| n.checked_next_multiple_of(PAGE))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(SegmentProblem::MetaLen {
            meta_len: meta_len as u64,
            header_len: u32::MAX / PAGE as u32 * PAGE as u32,
        })
}

/// Encodes a complete header of `header_len` bytes with the version field 0; the
/// creator stamps the version once the bytes are in place.
///
/// Refuses whatever [`parse_header`] would refuse, so every header it writes reads back.
pub(crate) fn encode_header(f: &HeaderFields) -> std::result::Result<Vec<u8>, SegmentProblem> {
    let layout = &f.layout;
    let (nbytes, extent) = layout.check()?;
    let meta = f.meta.encode(layout.ndim())?;
    check_header_len(f.header_len)?;
    let header_len = f.header_len as usize;
    if meta.len() > header_len - FIXED_LEN {
        return Err(SegmentProblem::MetaLen {
            meta_len: meta.len() as u64,
            header_len: f.header_len,
        });
    }
    if extent > f.data_len {
        return Err(SegmentProblem::Extent {
            needs: extent,
            data_len: f.data_len,
        });
    }
    if u64::from(f.header_len).checked_add(f.data_len).is_none() {
        return Err(SegmentProblem::Overflow {
            what: "header_len + data_len",
        });
    }
    let mut b = vec![0u8; header_len];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &MAGIC);
    put(OFF_HEADER_LEN, &f.header_len.to_le_bytes());
    put(OFF_DATA_LEN, &f.data_len.to_le_bytes());
    put(OFF_NBYTES, &nbytes.to_le_bytes());
    put(OFF_DTYPE, layout.dtype.typestr().as_bytes());
    put(
        OFF_ITEMSIZE,
        &(layout.dtype.itemsize() as u32).to_le_bytes(),
    );
    put(OFF_NDIM, &(layout.ndim() as u32).to_le_bytes());
    put(OFF_FLAGS, &f.flags().to_le_bytes());
    put(OFF_CREATOR_PID, &f.creator_pid.to_le_bytes());
    put(OFF_CREATOR_START, &f.creator_start.to_le_bytes());
    put(OFF_GENERATION, &f.generation.to_le_bytes());
    put(OFF_STATE, &f.state.to_le_bytes());
    put(OFF_OWNER_PID, &f.owner_pid.to_le_bytes());
    put(OFF_META_LEN, &(meta.len() as u32).to_le_bytes());
    for (axis, (&len, &stride)) in layout.shape.iter().zip(&layout.strides).enumerate() {
        put(OFF_SHAPE + 8 * axis, &(len as u64).to_le_bytes());
        put(OFF_STRIDES + 8 * axis, &(stride as u64).to_le_bytes());
    }
    put(FIXED_LEN, &meta);
    Ok(b)
}

fn check_header_len(header_len: u32) -> std::result::Result<(), SegmentProblem> {
    if (header_len as usize) < PAGE || header_len as usize % PAGE != 0 {
        return Err(SegmentProblem::HeaderLen { found: header_len });
    }
    Ok(())
}

/// Reads `N` bytes at `off`; callers have checked that `bytes` holds at least
/// [`FIXED_LEN`] bytes, so the fixed fields are always in range.
fn arr<const N: usize>(bytes: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[off..off + N]);
    a
}

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr(bytes, off))
}

fn u64_at(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(arr(bytes, off))
}

/// Parses and validates a header copied out of a segment of `file_size` bytes: steps 2
/// to 7 of the format's validation order (step 1, the `fstat` checks, belongs to the
/// opener). `bytes` must hold at least `header_len` bytes; more are ignored.
pub(crate) fn parse_header(
    bytes: &[u8],
    file_size: u64,
) -> std::result::Result<HeaderFields, SegmentProblem> {
    use SegmentProblem as P;
    let page = PAGE as u64;
    if file_size < page || (bytes.len() as u64) < page {
        return Err(P::TooSmall {
            size: file_size.min(bytes.len() as u64),
            needed: page,
        });
    }
    // Step 2: magic, version, header_len, meta_len (and the reserved word).
    let magic: [u8; 8] = arr(bytes, 0);
    if magic != MAGIC {
        return Err(P::BadMagic { found: magic });
    }
    match u32_at(bytes, OFF_VERSION) {
        0 => return Err(P::NotInitialised),
        VERSION => {}
        found => {
            return Err(P::Version {
                found,
                expected: VERSION,
            });
        }
    }
    let header_len = u32_at(bytes, OFF_HEADER_LEN);
    check_header_len(header_len)?;
    if u64::from(header_len) > file_size {
        return Err(P::HeaderBeyondEnd {
            header_len,
            file_size,
        });
    }
    if bytes.len() < header_len as usize {
        return Err(P::TooSmall {
            size: bytes.len() as u64,
            needed: u64::from(header_len),
        });
    }
    let meta_len = u32_at(bytes, OFF_META_LEN);
    if meta_len as usize > header_len as usize - FIXED_LEN {
        return Err(P::MetaLen {
            meta_len: u64::from(meta_len),
            header_len,
        });
    }
    let reserved = u32_at(bytes, OFF_RESERVED);
    if reserved != 0 {
        return Err(P::Reserved { found: reserved });
    }
    // Step 3: the data area lies inside the file.
    let data_len = u64_at(bytes, OFF_DATA_LEN);
    if u64::from(header_len)
        .checked_add(data_len)
        .is_none_or(|end| end > file_size)
    {
        return Err(P::DataBeyondEnd {
            header_len,
            data_len,
            file_size,
        });
    }
    // Step 4: dtype, itemsize, ndim, unused shape and stride entries, stride signs.
    let dtype = parse_dtype(&arr::<DTYPE_LEN>(bytes, OFF_DTYPE))?;
    let itemsize = u32_at(bytes, OFF_ITEMSIZE);
    if itemsize as usize != dtype.itemsize() {
        return Err(P::ItemSize {
            found: itemsize,
            expected: dtype.itemsize() as u32,
            dtype,
        });
    }
    let ndim = u32_at(bytes, OFF_NDIM);
    if ndim as usize > MAX_NDIM {
        return Err(P::Ndim {
            found: u64::from(ndim),
        });
    }
    let nd = ndim as usize;
    let shape: Vec<u64> = (0..MAX_NDIM)
        .map(|i| u64_at(bytes, OFF_SHAPE + 8 * i))
        .collect();
    let strides: Vec<i64> = (0..MAX_NDIM)
        .map(|i| i64::from_le_bytes(arr(bytes, OFF_STRIDES + 8 * i)))
        .collect();
    if let Some(axis) = (nd..MAX_NDIM).find(|&i| shape[i] != 0) {
        return Err(P::ShapeUnused {
            axis,
            found: shape[axis],
            ndim,
        });
    }
    if let Some(axis) = (nd..MAX_NDIM).find(|&i| strides[i] != 0) {
        return Err(P::StridesUnused {
            axis,
            found: strides[axis],
            ndim,
        });
    }
    if let Some(axis) = (0..nd).find(|&i| strides[i] < 0) {
        return Err(P::NegativeStride {
            axis,
            found: strides[axis],
        });
    }
    let (shape, strides): (Vec<u64>, Vec<u64>) = (
        shape[..nd].to_vec(),
        strides[..nd].iter().map(|&s| s as u64).collect(),
    );
    // Step 5: nbytes.
    let found = u64_at(bytes, OFF_NBYTES);
    let expected = nbytes(u64::from(itemsize), &shape).ok_or(P::Overflow {
        what: "itemsize × shape",
    })?;
    if found != expected {
        return Err(P::NBytes { found, expected });
    }
    // Step 6: the extent lies inside the data area; the flags match shape and strides.
    let needs = extent(u64::from(itemsize), &shape, &strides).ok_or(P::Overflow {
        what: "the extent of shape × strides",
    })?;
    if needs > data_len {
        return Err(P::Extent { needs, data_len });
    }
    let usizes = |v: &[u64], what| -> std::result::Result<Vec<usize>, SegmentProblem> {
        v.iter()
            .map(|&x| usize::try_from(x).map_err(|_| P::Unaddressable { what, value: x }))
            .collect()
    };
    let layout = Layout {
        dtype,
        shape: usizes(&shape, "a shape entry")?,
        strides: usizes(&strides, "a stride")?,
    };
    let flags = u32_at(bytes, OFF_FLAGS);
    let pool_slot = flags & FLAG_POOL_SLOT != 0;
    if flags & !FLAG_POOL_SLOT != layout.flags() {
        return Err(P::Flags {
            found: flags,
            expected: layout.flags() | (flags & FLAG_POOL_SLOT),
        });
    }
    // Step 7: the metadata block.
    let block = &bytes[FIXED_LEN..FIXED_LEN + meta_len as usize];
    let value = loads(block).map_err(|e| P::Meta {
        reason: format!("does not decode: {e}"),
    })?;
    let meta = Meta::parse(&value, nd)?;
    Ok(HeaderFields {
        layout,
        meta,
        header_len,
        data_len,
        creator_pid: u32_at(bytes, OFF_CREATOR_PID),
        creator_start: u64_at(bytes, OFF_CREATOR_START),
        generation: u64_at(bytes, OFF_GENERATION),
        state: u32_at(bytes, OFF_STATE),
        owner_pid: u32_at(bytes, OFF_OWNER_PID),
        pool_slot,
    })
}

/// The dtype field: an ASCII typestr padded with NULs to 16 bytes.
fn parse_dtype(field: &[u8; DTYPE_LEN]) -> std::result::Result<DType, SegmentProblem> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(DTYPE_LEN);
    let (text, pad) = field.split_at(end);
    std::str::from_utf8(text)
        .ok()
        .filter(|_| pad.iter().all(|&b| b == 0))
        .and_then(DType::from_typestr)
        .ok_or_else(|| {
            let trimmed = &field[..field.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)];
            SegmentProblem::DType {
                found: trimmed.escape_ascii().to_string(),
            }
        })
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
