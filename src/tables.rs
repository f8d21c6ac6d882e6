//! What `tests/spec_tables.rs` checks the shared tables under `spec/` against: the
//! message types the frame layer decodes and the header validation. Not part of the
//! API: hidden from the docs and exempt from semver, as [`crate::fuzzing`] is.
//!
//! # Rationale
//!
//! Both are crate-private; the test that holds them to `spec/message_types.tsv` and
//! `spec/header_rejections.tsv` is a separate crate. Rather than widen their
//! visibility, this module exposes the two views that test needs.

use crate::frame::MsgType;
use crate::problem::SegmentProblem;

/// Every message type that `src/frame.rs` decodes, by number: the number and the
/// variant's name (`ChannelCloseError`).
pub fn message_types() -> Vec<(i8, String)> {
    (i8::MIN..=i8::MAX)
        .filter_map(|n| {
            let t = MsgType::from_i8(n)?;
            assert_eq!(t as i8, n, "{t:?} decodes from {n}");
            Some((n, format!("{t:?}")))
        })
        .collect()
}

/// Validates a header copied out of a segment of `file_size` bytes as an opener does
/// (docs/SEGMENT_FORMAT.md §8, the size and steps 2 to 7): the first check it fails.
pub fn parse_header(bytes: &[u8], file_size: u64) -> Result<(), SegmentProblem> {
    crate::header::parse_header(bytes, file_size).map(|_| ())
}
