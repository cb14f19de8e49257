//! Fuzzes the NRI trunk frame decoder and the ttrpc message decoder behind it.
//!
//! The input is cut into chunks (sizes taken from the input itself) and fed to a
//! [`FrameDecoder`]; each frame's payload goes to its connection's [`MessageDecoder`], and each
//! message is decoded as a ttrpc request. Checked: no panic, no unbounded buffering, and frames
//! re-encoded give back exactly the bytes consumed.
#![no_main]

use std::collections::HashMap;

use driftguard_proto::frame::{encode_frame, FrameDecoder, MAX_PAYLOAD};
use driftguard_proto::ttrpc::{MessageDecoder, Request};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = usize::from(step % 64) + 1;
    let mut frames = FrameDecoder::new();
    let mut streams: HashMap<u32, MessageDecoder> = HashMap::new();
    let mut consumed = Vec::new();
    for chunk in rest.chunks(step) {
        frames.extend(chunk);
        loop {
            match frames.decode() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= MAX_PAYLOAD);
                    consumed.extend_from_slice(&encode_frame(frame.conn_id, &frame.payload));
                    feed(streams.entry(frame.conn_id).or_default(), &frame.payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(frames.buffered() <= rest.len());
    }
    assert_eq!(&consumed[..], &rest[..consumed.len()]);
});

fn feed(stream: &mut MessageDecoder, payload: &[u8]) {
    stream.extend(payload);
    while let Ok(Some(message)) = stream.decode() {
        let _ = Request::decode(message.payload);
    }
}
