//! The by-value transport: arrays for a peer that shares no memory with this host (an
//! ssh gateway, or `transport=by-value`).
//!
//! The references on the wire are the anonymous transport's (`V`, docs/PROTOCOL.md
//! §5.7); what travels beside a frame is not a descriptor on a socket but the segment's
//! bytes, in OBJECT and CHUNK frames on the protocol pipe under the same token
//! (docs/PROTOCOL.md §4.14). The receiver writes them into a new anonymous object of its
//! own, seals it and files its descriptor under the token, so that everything after —
//! validation, mapping, the ledger, adoption — is the anonymous transport's, unchanged.
//! A lent array's pixels come back in WRITE_BACK frames before its RELEASE.
//!
//! Flow control is the pipe's: a writer waits for room, so a sender never holds more
//! than one chunk of a transfer in memory, and no frame is above the frame limit.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::frame::{HEADER_LEN, Header, MsgType};
use crate::output::lock;
use crate::segment::AnonObject;

/// Bytes of pixels per CHUNK frame at most (less when the frame limit is smaller).
pub(crate) const CHUNK: usize = 1 << 20;

/// The largest object a peer may announce: 1 TiB (memory is only used as bytes come).
pub(crate) const MAX_OBJECT: u64 = 1 << 40;

/// Objects being received at once, at most; more is a broken peer.
pub(crate) const MAX_BUILDING: usize = 64;

/// Received objects no reference took yet, at most (as for descriptors).
pub(crate) const MAX_FILED: usize = 1024;

/// The OBJECT payload before the name: token, size, start (u64 each), access (u8),
/// name length (u8); the sender's name of the object follows.
pub(crate) const OBJECT_LEN: usize = 26;

/// The CHUNK payload before its bytes: token, offset (u64 each).
pub(crate) const CHUNK_PREFIX: usize = 16;

/// The page of a segment's header (docs/SEGMENT_FORMAT.md).
const PAGE: u64 = 4096;

/// One gateway's by-value state: the tokens it sends under, and what it receives.
#[derive(Debug, Default)]
pub(crate) struct ByValue {
    next_send: AtomicU64,
    rx: Mutex<Rx>,
}

#[derive(Debug, Default)]
struct Rx {
    building: HashMap<u64, Building>,
    filed: HashMap<u64, std::result::Result<OwnedFd, String>>,
}

#[derive(Debug)]
struct Building {
    obj: AnonObject,
    size: u64,
    /// The offset the next chunk must start at.
    next: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl ByValue {
    pub(crate) fn new() -> ByValue {
        ByValue {
            next_send: AtomicU64::new(1),
            rx: Mutex::new(Rx::default()),
        }
    }

    /// Frames that copy the segment at `offset` of `obj` to the peer: one OBJECT and
    /// its CHUNKs, each handed to `write` as soon as it is built (so at most one chunk
    /// is in memory). Returns the token the reference names.
    ///
    /// # Errors
    ///
    /// The segment's header cannot be read or is not one; what `write` reports.
    pub(crate) fn send_object(
        &self,
        obj: &AnonObject,
        offset: u64,
        writable: bool,
        max_frame: u32,
        mut write: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let name = obj.name().to_string();
        let fail = |what: String| Error::protocol(format!("copying array {name}: {what}"));
        let file = obj.file().map_err(|p| fail(p.to_string()))?;
        let mut head = vec![0u8; PAGE as usize];
        file.read_exact_at(&mut head, offset)
            .map_err(|e| fail(format!("reading its header: {e}")))?;
        let raw = crate::header::RawHeader::decode(&head)
            .filter(|h| h.magic_ok())
            .ok_or_else(|| fail("no segment header at its offset".into()))?;
        let end = offset
            .checked_add(u64::from(raw.header_len))
            .and_then(|e| e.checked_add(raw.data_len))
            .ok_or_else(|| fail("header lengths overflow".into()))?;
        let size = obj.size().map_err(|p| fail(p.to_string()))?;
        if end > size {
            return Err(fail(format!("its header claims {end} bytes of {size}")));
        }
        let token = self.next_send.fetch_add(1, Ordering::Relaxed);
        let label = obj.name().as_bytes();
        let mut frame = vec![0u8; HEADER_LEN + OBJECT_LEN];
        Header::write(
            MsgType::Object as i8,
            0,
            (OBJECT_LEN + label.len()) as u32,
            &mut frame,
        );
        frame[HEADER_LEN + 25] = label.len() as u8;
        frame.extend_from_slice(label);
        frame[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&token.to_be_bytes());
        frame[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&end.to_be_bytes());
        frame[HEADER_LEN + 16..HEADER_LEN + 24].copy_from_slice(&offset.to_be_bytes());
        frame[HEADER_LEN + 24] = u8::from(writable);
        write(&frame)?;
        let chunk = chunk_len(max_frame);
        let mut buf = vec![0u8; HEADER_LEN + CHUNK_PREFIX + chunk];
        let mut pos = offset;
        while pos < end {
            let n = chunk.min((end - pos) as usize);
            let frame = &mut buf[..HEADER_LEN + CHUNK_PREFIX + n];
            Header::write(
                MsgType::Chunk as i8,
                0,
                (CHUNK_PREFIX + n) as u32,
                &mut frame[..HEADER_LEN],
            );
            frame[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&token.to_be_bytes());
            frame[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&pos.to_be_bytes());
            file.read_exact_at(&mut frame[HEADER_LEN + CHUNK_PREFIX..], pos)
                .map_err(|e| fail(format!("reading its bytes: {e}")))?;
            write(frame)?;
            pos += n as u64;
        }
        Ok(token)
    }

    /// Takes in an OBJECT frame's payload. A malformed one files an error under its
    /// token (when it has one), so that the reference naming it fails.
    pub(crate) fn object(&self, payload: &[u8]) -> std::result::Result<(), String> {
        let name = payload
            .get(OBJECT_LEN - 1)
            .map(|&n| OBJECT_LEN + n as usize)
            .filter(|&end| end == payload.len())
            .and_then(|_| std::str::from_utf8(&payload[OBJECT_LEN..]).ok())
            .filter(|n| crate::segment::check_name(n).is_ok())
            .ok_or_else(|| {
                format!(
                    "object message of {} bytes: expected {OBJECT_LEN} and a segment name",
                    payload.len()
                )
            })?
            .to_string();
        let (token, size, start) = (u64_at(payload, 0), u64_at(payload, 8), u64_at(payload, 16));
        let mut rx = lock(&self.rx);
        if token == 0 || rx.building.contains_key(&token) || rx.filed.contains_key(&token) {
            return Err(format!("object token {token} is 0 or in use"));
        }
        let problem = if size > MAX_OBJECT {
            Some(format!("object of {size} bytes exceeds {MAX_OBJECT}"))
        } else if start % PAGE != 0 || start.checked_add(PAGE).is_none_or(|e| e > size) {
            Some(format!(
                "object of {size} bytes cannot start its segment at {start}"
            ))
        } else if rx.building.len() >= MAX_BUILDING {
            Some(format!(
                "more than {MAX_BUILDING} objects on their way at once"
            ))
        } else if rx.filed.len() >= MAX_FILED {
            Some(format!(
                "more than {MAX_FILED} objects that no reference took"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            if rx.filed.len() < MAX_FILED {
                rx.filed.insert(token, Err(p.clone()));
            }
            return Err(p);
        }
        // The sender's name: the object's identity on both sides, as for a descriptor.
        match AnonObject::create(&name, size) {
            Ok(obj) => {
                rx.building.insert(
                    token,
                    Building {
                        obj,
                        size,
                        next: start,
                    },
                );
                Ok(())
            }
            Err(p) => {
                let why = format!("object {token} of {size} bytes: {p}");
                rx.filed.insert(token, Err(why.clone()));
                Err(why)
            }
        }
    }

    /// Takes in a CHUNK frame's payload; the last chunk of an object seals it and files
    /// its descriptor.
    pub(crate) fn chunk(&self, payload: &[u8]) -> std::result::Result<(), String> {
        if payload.len() < CHUNK_PREFIX {
            return Err(format!("chunk message of {} bytes", payload.len()));
        }
        let (token, offset) = (u64_at(payload, 0), u64_at(payload, 8));
        let data = &payload[CHUNK_PREFIX..];
        let mut rx = lock(&self.rx);
        let Some(b) = rx.building.get_mut(&token) else {
            return Err(format!("chunk for object {token}, which is not on its way"));
        };
        let end = offset.checked_add(data.len() as u64);
        let problem = if offset != b.next {
            Some(format!(
                "chunk of object {token} at offset {offset}, expected {}",
                b.next
            ))
        } else if end.is_none_or(|e| e > b.size) {
            Some(format!(
                "chunk of object {token} runs past its {} bytes",
                b.size
            ))
        } else if data.is_empty() {
            Some(format!("empty chunk of object {token}"))
        } else {
            b.obj
                .file()
                .map_err(|p| p.to_string())
                .and_then(|f: File| f.write_all_at(data, offset).map_err(|e| e.to_string()))
                .err()
                .map(|e| format!("writing object {token}: {e}"))
        };
        if let Some(p) = problem {
            rx.building.remove(&token);
            rx.filed.insert(token, Err(p.clone()));
            return Err(p);
        }
        b.next = end.expect("checked");
        if b.next == b.size {
            let b = rx.building.remove(&token).expect("present");
            let done = b
                .obj
                .seal()
                .map_err(|p| p.to_string())
                .and_then(|()| b.obj.descriptor(true).map_err(|e| e.to_string()));
            rx.filed.insert(token, done);
        }
        Ok(())
    }

    /// The descriptor of the object received under `token`, once.
    pub(crate) fn take(&self, token: u64) -> std::result::Result<OwnedFd, String> {
        let mut rx = lock(&self.rx);
        match rx.filed.remove(&token) {
            Some(r) => r.map_err(|e| format!("object {token} was refused: {e}")),
            None if rx.building.remove(&token).is_some() => Err(format!(
                "object {token} is incomplete: its reference came before its last chunk"
            )),
            None => Err(format!("no object arrived under token {token}")),
        }
    }

    /// Objects received and not taken, and objects still arriving.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> (usize, usize) {
        let rx = lock(&self.rx);
        (rx.filed.len(), rx.building.len())
    }
}

/// Pixels per chunk for a frame limit: at most [`CHUNK`], and a frame within the limit.
pub(crate) fn chunk_len(max_frame: u32) -> usize {
    CHUNK.min((max_frame as usize).saturating_sub(CHUNK_PREFIX).max(1))
}

/// Parses a WRITE_BACK payload: `(key, generation, offset in the data area, bytes)`.
pub(crate) fn parse_write_back(
    payload: &[u8],
) -> std::result::Result<(&str, u64, u64, &[u8]), String> {
    if payload.len() < 18 {
        return Err(format!("write-back message of {} bytes", payload.len()));
    }
    let generation = u64_at(payload, 0);
    let offset = u64_at(payload, 8);
    let klen = u16::from_be_bytes([payload[16], payload[17]]) as usize;
    let key = payload
        .get(18..18 + klen)
        .ok_or_else(|| format!("write-back key of {klen} bytes runs past the message"))?;
    let key = std::str::from_utf8(key).map_err(|_| "write-back key is not UTF-8".to_string())?;
    Ok((key, generation, offset, &payload[18 + klen..]))
}

/// Whether `fd` can be written at `offset`: used by the ledger's write-back.
pub(crate) fn write_at(fd: impl AsFd, data: &[u8], offset: u64) -> std::io::Result<()> {
    let file = File::from(fd.as_fd().try_clone_to_owned()?);
    file.write_all_at(data, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(token: u64, size: u64, start: u64) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&token.to_be_bytes());
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&start.to_be_bytes());
        p.push(1);
        let name = b"/pxg-1-00000000000000ab";
        p.push(name.len() as u8);
        p.extend_from_slice(name);
        p
    }

    fn chunk(token: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&token.to_be_bytes());
        p.extend_from_slice(&offset.to_be_bytes());
        p.extend_from_slice(data);
        p
    }

    #[test]
    fn an_object_arrives_in_order_and_is_taken_once() {
        let bv = ByValue::new();
        bv.object(&object(7, 8192, 0)).unwrap();
        bv.chunk(&chunk(7, 0, &[1; 4096])).unwrap();
        assert!(bv.take(7).unwrap_err().contains("incomplete"));
        bv.object(&object(8, 8192, 0)).unwrap();
        bv.chunk(&chunk(8, 0, &[1; 4096])).unwrap();
        bv.chunk(&chunk(8, 4096, &[2; 4096])).unwrap();
        let fd = bv.take(8).unwrap();
        let mut b = [0u8; 2];
        File::from(fd).read_exact_at(&mut b, 4095).unwrap();
        assert_eq!(b, [1, 2]);
        assert!(bv.take(8).unwrap_err().contains("no object"));
        assert_eq!(bv.pending(), (0, 0));
    }

    #[test]
    fn bad_chunks_fail_the_object_and_nothing_else() {
        let bv = ByValue::new();
        for (token, bad) in [
            (1u64, chunk(1, 4096, &[0; 16])),
            (2, chunk(2, 0, &[0; 8193])),
            (3, chunk(3, 0, &[])),
        ] {
            bv.object(&object(token, 8192, 0)).unwrap();
            assert!(bv.chunk(&bad).is_err());
            assert!(bv.take(token).unwrap_err().contains("refused"));
        }
        assert!(bv.chunk(&chunk(99, 0, &[0; 4])).is_err());
        assert!(bv.chunk(&[0; 3]).is_err());
        assert!(bv.object(&object(0, 8192, 0)).is_err());
        assert!(bv.object(&object(4, MAX_OBJECT + 1, 0)).is_err());
        assert!(bv.object(&object(5, 8192, 100)).is_err());
        assert!(bv.object(&[0; 3]).is_err());
        let mut bad_name = object(9, 4096, 0);
        bad_name.truncate(bad_name.len() - 1);
        assert!(bv.object(&bad_name).is_err());
        // A good object after all that still arrives.
        bv.object(&object(6, 4096, 0)).unwrap();
        bv.chunk(&chunk(6, 0, &[9; 4096])).unwrap();
        assert!(bv.take(6).is_ok());
    }

    #[test]
    fn a_sender_never_builds_a_frame_above_the_limit() {
        assert_eq!(chunk_len(1 << 30), CHUNK);
        assert_eq!(chunk_len(4096), 4096 - CHUNK_PREFIX);
    }

    #[test]
    fn write_back_payloads_parse_or_fail() {
        let mut p = Vec::new();
        p.extend_from_slice(&3u64.to_be_bytes());
        p.extend_from_slice(&16u64.to_be_bytes());
        p.extend_from_slice(&4u16.to_be_bytes());
        p.extend_from_slice(b"/pxg");
        p.extend_from_slice(&[5, 6]);
        assert_eq!(
            parse_write_back(&p).unwrap(),
            ("/pxg", 3, 16, &[5u8, 6][..])
        );
        assert!(parse_write_back(&p[..19]).is_err());
        assert!(parse_write_back(&p[..10]).is_err());
    }
}
