//! ttrpc message framing over one logical connection, and the ttrpc envelope messages.
//!
//! A ttrpc message is a 10-byte big-endian header (payload length u32, stream id u32, type u8,
//! flags u8) followed by the payload, a protobuf [`Request`] or [`Response`].
//!
//! Writing follows the rule the Go peer needs (its mux copies a whole frame into the reader's
//! buffer, which is 4096 bytes when a message starts): [`message_frames`] puts the header and at
//! most 4086 payload bytes in the first frame and the rest of the payload in a second frame,
//! and never mixes two messages in one frame. Reading treats the connection as a byte stream:
//! [`MessageDecoder`] reassembles messages from frames of any size.
//!
//! Invariant: a payload above [`MAX_MESSAGE_LEN`] (4 MiB, as in containerd/ttrpc) is refused on
//! both paths; an announced length above it is an error before any allocation.

use bytes::{Buf, Bytes, BytesMut};

mod envelope {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/ttrpc.rs"));
}
pub use envelope::{KeyValue, Request, Response, Status as StatusProto};

/// Length of the ttrpc message header.
pub const HEADER_LEN: usize = 10;
/// Largest ttrpc payload (containerd/ttrpc `messageLengthMax`).
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// Largest first frame of a message the Go reader accepts (its bufio buffer size).
pub const FIRST_FRAME_MAX: usize = 4096;

/// Message type: request.
pub const TYPE_REQUEST: u8 = 1;
/// Message type: response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type: stream data.
pub const TYPE_DATA: u8 = 3;

/// A ttrpc message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes.
    pub len: u32,
    /// Stream id (odd for client-initiated streams).
    pub stream_id: u32,
    /// Message type ([`TYPE_REQUEST`], [`TYPE_RESPONSE`], [`TYPE_DATA`]).
    pub msg_type: u8,
    /// Flags (0 for unary calls).
    pub flags: u8,
}

impl Header {
    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.len.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8] = self.msg_type;
        out[9] = self.flags;
        out
    }

    /// Decodes a header from its 10 bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            msg_type: b[8],
            flags: b[9],
        }
    }
}

/// One complete ttrpc message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header (its `len` equals `payload.len()`).
    pub header: Header,
    /// The payload.
    pub payload: Bytes,
}

/// A ttrpc message that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The header announces more than [`MAX_MESSAGE_LEN`] payload bytes.
    #[error("ttrpc message on stream {stream_id} announces {len} bytes, the limit is {max}")]
    TooLarge {
        /// Stream id from the header.
        stream_id: u32,
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Splits one message into the trunk payloads to send (see the module docs for the rule).
///
/// Returns an error for a payload above [`MAX_MESSAGE_LEN`].
pub fn message_frames(
    stream_id: u32,
    msg_type: u8,
    flags: u8,
    payload: &[u8],
) -> Result<Vec<Bytes>, MessageError> {
    if payload.len() > MAX_MESSAGE_LEN {
        return Err(MessageError::TooLarge {
            stream_id,
            len: payload.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    // The length fits in u32: it is at most 4 MiB.
    let header = Header {
        len: payload.len() as u32,
        stream_id,
        msg_type,
        flags,
    };
    let split = payload.len().min(FIRST_FRAME_MAX - HEADER_LEN);
    let mut first = BytesMut::with_capacity(HEADER_LEN + split);
    first.extend_from_slice(&header.to_bytes());
    first.extend_from_slice(&payload[..split]);
    let mut frames = vec![first.freeze()];
    if split < payload.len() {
        frames.push(Bytes::copy_from_slice(&payload[split..]));
    }
    Ok(frames)
}

/// Incremental decoder of ttrpc messages from one connection's byte stream.
#[derive(Debug, Default)]
pub struct MessageDecoder {
    buf: BytesMut,
}

impl MessageDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes of the connection's stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next complete message, `Ok(None)` when more bytes are needed.
    ///
    /// After an error the decoder must be dropped: the stream is out of sync.
    pub fn decode(&mut self) -> Result<Option<Message>, MessageError> {
        let Some(raw) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(raw);
        let header = Header::from_bytes(&bytes);
        let len = header.len as usize;
        if len > MAX_MESSAGE_LEN {
            let stream_id = header.stream_id;
            return Err(MessageError::TooLarge {
                stream_id,
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Message { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_big_endian() {
        let h = Header {
            len: 0x0102,
            stream_id: 3,
            msg_type: TYPE_RESPONSE,
            flags: 0,
        };
        assert_eq!(h.to_bytes(), [0, 0, 1, 2, 0, 0, 0, 3, 2, 0]);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn small_message_is_one_frame() {
        let frames = message_frames(1, TYPE_REQUEST, 0, b"hi").expect("small");
        assert_eq!(frames.len(), 1);
        assert_eq!(&frames[0][..], &[0, 0, 0, 2, 0, 0, 0, 1, 1, 0, b'h', b'i']);
    }

    #[test]
    fn large_message_first_frame_is_4096_bytes_then_the_rest() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let frames = message_frames(5, TYPE_RESPONSE, 0, &payload).expect("fits");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len(), FIRST_FRAME_MAX);
        assert_eq!(
            &frames[0][..HEADER_LEN],
            &[0, 0, 0x27, 0x10, 0, 0, 0, 5, 2, 0]
        );
        assert_eq!(&frames[0][HEADER_LEN..], &payload[..4086]);
        assert_eq!(&frames[1][..], &payload[4086..]);
    }

    #[test]
    fn exactly_4086_payload_bytes_stay_in_one_frame() {
        let payload = vec![7u8; 4086];
        let frames = message_frames(1, TYPE_REQUEST, 0, &payload).expect("fits");
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), 4096);
    }

    #[test]
    fn refuses_oversized_payload() {
        let payload = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(message_frames(1, TYPE_REQUEST, 0, &payload).is_err());
    }

    #[test]
    fn decoder_reassembles_across_arbitrary_chunks() {
        let mut stream = Vec::new();
        for frame in message_frames(1, TYPE_REQUEST, 0, &[9u8; 5000]).expect("fits") {
            stream.extend_from_slice(&frame);
        }
        for frame in message_frames(3, TYPE_REQUEST, 0, b"").expect("fits") {
            stream.extend_from_slice(&frame);
        }
        let mut dec = MessageDecoder::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            dec.extend(chunk);
            while let Some(m) = dec.decode().expect("valid") {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload.len(), 5000);
        assert_eq!(got[1].header.stream_id, 3);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn decoder_rejects_announced_oversize() {
        let mut dec = MessageDecoder::new();
        dec.extend(&[0x00, 0x40, 0x00, 0x01, 0, 0, 0, 1, 1, 0]);
        let err = dec.decode().expect_err("too large");
        assert!(err.to_string().contains("stream 1"));
    }
}
