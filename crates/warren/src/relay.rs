//! Relays: how a node behind NATs is reached by identity alone.
//!
//! A node keeps one QUIC connection to its home relay, from the same UDP socket it uses for
//! peers ([`client::RelayClient`]). The relay tells it its reflexive address, answers "is this
//! peer here?", and forwards [`frame`]s between the nodes it serves: end-to-end encrypted QUIC
//! packets it cannot read. Two peers connected through the relay then punch a hole
//! ([`crate::node::punch`]) and move the connection to the direct path when it opens. The server is
//! the `warren-relay` crate.

pub mod client;
pub mod tcp;

use crate::wire::{control, frame, record as stream};

/// Fuzzing entry point (the `relay_wire` target): `data` as a datagram, as a control message
/// either way, as a hole-punching message and as a TCP relay stream. Never panics; a data frame that parses
/// re-encodes to the same bytes; what decodes re-encodes within the size limit.
#[doc(hidden)]
pub fn fuzz_relay_wire(data: &[u8]) {
    if let Ok(frame::Frame::Data { peer, payload }) = frame::Frame::parse(data) {
        assert!(payload.len() <= frame::MAX_PAYLOAD);
        let mut again = vec![0; frame::DATA_HEADER_LEN + payload.len()];
        frame::write_data_header(&mut again, &peer);
        again[frame::DATA_HEADER_LEN..].copy_from_slice(payload);
        assert_eq!(again, data);
    }
    if data.len() <= control::MAX_MESSAGE {
        if let Ok(request) = control::decode::<control::Request>(data) {
            assert!(warren_proto::encode_to_vec(&request).is_ok_and(|b| b.len() <= control::MAX_MESSAGE));
        }
        if let Ok(response) = control::decode::<control::Response>(data) {
            assert!(warren_proto::encode_to_vec(&response).is_ok_and(|b| b.len() <= control::MAX_MESSAGE));
        }
    }
    crate::wire::punch::fuzz_message(data);
    // As the bytes of a TCP relay stream: records until the bytes run out or one is refused.
    let mut input = data;
    while let Ok(record) = futures_lite::future::block_on(stream::read(&mut input)) {
        match record {
            stream::Record::Control(body) => assert!(body.len() <= stream::MAX_RECORD),
            stream::Record::Data(frame) => assert!(frame.len() <= stream::MAX_DATA && frame::is_frame(&frame)),
        }
    }
}
