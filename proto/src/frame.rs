//! The NRI multiplexer's trunk framing: `conn id (u32 BE) | payload length (u32 BE) | payload`.
//!
//! [`FrameDecoder`] is a pure, incremental decoder (no I/O): feed it bytes as they arrive and
//! take whole frames out. It is the part of the protocol that faces raw bytes from the peer and
//! is fuzzed (`fuzz/fuzz_targets/frame_decoder.rs`).
//!
//! Invariants: a frame's payload never exceeds [`MAX_PAYLOAD`] (ttrpc's 10-byte header plus its
//! 4 MiB message limit, as in containerd/nri); a longer announced length is an error, never an
//! allocation. Frames carry no message boundaries: each logical connection is a byte stream.

use bytes::{Buf, Bytes, BytesMut};

/// Length of a frame header: 4-byte connection id + 4-byte payload length.
pub const HEADER_LEN: usize = 8;
/// Largest payload a frame may carry (ttrpc header length + ttrpc message limit).
pub const MAX_PAYLOAD: usize = crate::ttrpc::HEADER_LEN + crate::ttrpc::MAX_MESSAGE_LEN;

/// One frame taken off the trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Logical connection the payload belongs to.
    pub conn_id: u32,
    /// The payload bytes (a slice of the connection's byte stream).
    pub payload: Bytes,
}

/// A trunk frame that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces a payload above [`MAX_PAYLOAD`].
    #[error("frame for connection {conn_id} announces {len} payload bytes, the limit is {max}")]
    TooLarge {
        /// Connection id from the header.
        conn_id: u32,
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes one frame: header followed by `payload`.
///
/// # Panics
///
/// Never; a payload longer than `u32::MAX` cannot be built by the callers of this crate, which
/// cap payloads at [`MAX_PAYLOAD`] (checked with a debug assertion).
pub fn encode_frame(conn_id: u32, payload: &[u8]) -> Bytes {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&conn_id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.freeze()
}

/// Incremental decoder of trunk frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the standard [`MAX_PAYLOAD`] limit.
    pub fn new() -> Self {
        Self::with_limit(MAX_PAYLOAD)
    }

    /// A decoder with a custom payload limit (tests, fuzzing).
    pub fn with_limit(max_payload: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_payload,
        }
    }

    /// Appends bytes read from the trunk.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// After an error the decoder must be dropped: the trunk is out of sync.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let conn_id = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                conn_id,
                len,
                max: self.max_payload,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            // Reserve only what the (bounded) announced length still needs.
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { conn_id, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_big_endian_header() {
        let frame = encode_frame(2, b"abc");
        assert_eq!(&frame[..], &[0, 0, 0, 2, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(
            &encode_frame(0x0102_0304, b"")[..],
            &[1, 2, 3, 4, 0, 0, 0, 0]
        );
    }

    #[test]
    fn decodes_frames_split_at_every_byte() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_frame(1, b"hello"));
        wire.extend_from_slice(&encode_frame(2, b""));
        wire.extend_from_slice(&encode_frame(1, b"x"));
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in &wire {
            dec.extend(std::slice::from_ref(byte));
            while let Some(frame) = dec.decode().expect("valid frames") {
                got.push(frame);
            }
        }
        let want = vec![
            Frame {
                conn_id: 1,
                payload: Bytes::from_static(b"hello"),
            },
            Frame {
                conn_id: 2,
                payload: Bytes::new(),
            },
            Frame {
                conn_id: 1,
                payload: Bytes::from_static(b"x"),
            },
        ];
        assert_eq!(got, want);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn rejects_oversized_length_without_allocating() {
        let mut dec = FrameDecoder::new();
        dec.extend(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        let err = dec.decode().expect_err("oversized");
        assert_eq!(
            err,
            FrameError::TooLarge {
                conn_id: 1,
                len: 0xffff_ffff,
                max: MAX_PAYLOAD
            }
        );
        assert!(err.to_string().contains("connection 1"));
    }

    #[test]
    fn accepts_exactly_the_limit() {
        let mut dec = FrameDecoder::with_limit(4);
        dec.extend(&[0, 0, 0, 9, 0, 0, 0, 4, 1, 2, 3, 4]);
        let frame = dec.decode().expect("at limit").expect("complete");
        assert_eq!(frame.conn_id, 9);
        dec.extend(&[0, 0, 0, 9, 0, 0, 0, 5]);
        assert!(dec.decode().is_err());
    }
}
