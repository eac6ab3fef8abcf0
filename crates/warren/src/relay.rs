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
    // As a datagram at a node's path table, from the peer's address, from its relay and over
    // the TCP link: refused or taken, never a panic, and never more sent back than came in.
    {
        use crate::state::path_table::{PathTable, RelayInfo};
        let peer = crate::Identity::from_secret_bytes(&[0x11; 32]).to_remote_identity();
        let me = crate::Identity::from_secret_bytes(&[0x22; 32]).to_remote_identity();
        {
            let now = std::time::Instant::now();
            let relay: std::net::SocketAddr = ([203, 0, 113, 1], 3478).into();
            let mut table = PathTable::new(me, [0x44; 32]);
            table.set_relay(Some(RelayInfo { identity: peer, addr: relay, tcp: false }));
            table.add_key(now, peer, 1, [0x33; 32]);
            for from in [Some(([198, 51, 100, 2], 5000).into()), Some(relay), None] {
                let _ = table.handle_frame(now, from, data);
            }
            while let Some((_, out)) = table.poll_transmit() {
                assert!(out.len() <= data.len().max(frame::CHALLENGE_LEN));
            }
        }
    }
    // As the bytes of a TCP relay stream: records until the bytes run out or one is refused.
    let mut input = data;
    while let Ok(record) = futures_lite::future::block_on(stream::read(&mut input)) {
        match record {
            stream::Record::Control(body) => assert!(body.len() <= stream::MAX_RECORD),
            stream::Record::Data(frame) => assert!(frame.len() <= stream::MAX_DATA && frame::is_frame(&frame)),
        }
    }
}
