//! Property tests of warren's own wire messages: decode(encode(x)) == x for every valid hello
//! and stream header, and arbitrary bytes never panic the readers.

use proptest::prelude::*;
use warren::wire::{self, Hello, HelloBody, StreamHeader, WireVersion};
use warren_proto::{decode_from_slice, encode_to_vec};

fn protocol_name() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        prop::collection::btree_map("[!-<>-~]{1,64}", ".{0,60}", 0..64),
        prop::collection::vec(protocol_name(), 0..64),
    )
        .prop_map(|(minor, metadata, protocols)| Hello { major: wire::WIRE_VERSION_MAJOR, minor, metadata, protocols })
        .prop_filter("values within 255 bytes", |h| h.validate().is_ok())
}

proptest! {
    #[test]
    fn hellos_round_trip(hello in hello()) {
        let bytes = hello.to_bytes().unwrap();
        prop_assert_eq!(Hello::from_bytes(&bytes).unwrap(), hello.clone());
        // The same bytes are a WireVersion followed by a HelloBody.
        let version: WireVersion = warren_proto::decode_prefix(&bytes).unwrap();
        prop_assert_eq!(version, WireVersion { major: hello.major, minor: hello.minor });
        let body: HelloBody = decode_from_slice(&bytes[4..]).unwrap();
        prop_assert_eq!(body.protocols, hello.protocols);
    }

    #[test]
    fn stream_headers_round_trip(protocol in protocol_name()) {
        let bytes = wire::encode_stream_header(&protocol).unwrap();
        prop_assert_eq!(&bytes, &encode_to_vec(&StreamHeader { protocol: protocol.clone() }).unwrap());
        let read = futures_lite::future::block_on(wire::read_stream_header(&mut &bytes[..])).unwrap();
        prop_assert_eq!(read, protocol);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_readers(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        wire::fuzz_hello(&bytes);
        wire::fuzz_stream_header(&bytes);
    }
}
