//! The derive on structs (named, tuple, unit), enums and generics: golden bytes, limits, error
//! paths, closed versus truncated streams, and evolving a message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use warren_proto::{
    Decode, DecodeErrorKind, Encode, EncodeError, Message, Reader, decode_from_slice, decode_prefix, encode_to_vec,
};

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
#[proto(max_len = 1024)]
struct Hello {
    #[proto(varint)]
    version: u32,
    name: String,
    #[proto(max_len = 16)]
    protocols: Vec<String>,
    addrs: Vec<SocketAddr>,
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Pair(u16, bool);

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Unit;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
enum Frame {
    Ping(u64),
    Data {
        offset: u64,
        block: Bytes,
    },
    #[proto(tag = 9)]
    Bye,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Envelope<T> {
    id: u8,
    body: Option<T>,
}

fn hello() -> Hello {
    Hello {
        version: 300,
        name: "ann".into(),
        protocols: vec!["ping/1".into(), "chat/1".into()],
        addrs: vec!["192.0.2.1:4450".parse().unwrap()],
        metadata: [("os".to_string(), "linux".to_string())].into(),
    }
}

async fn decode<T: Message>(bytes: &[u8]) -> Result<T, warren_proto::DecodeError> {
    Reader::new(bytes).decode().await
}

#[test]
fn golden_bytes_pin_the_format() {
    let bytes = encode_to_vec(&hello()).unwrap();
    let expected: &[u8] = &[
        0xac, 0x02, // version 300 as a varint
        3, b'a', b'n', b'n', // name
        2, 6, b'p', b'i', b'n', b'g', b'/', b'1', 6, b'c', b'h', b'a', b't', b'/', b'1', // protocols
        1, 4, 192, 0, 2, 1, 0x62, 0x11, // one IPv4 address, port 4450 little-endian
        1, 2, b'o', b's', 5, b'l', b'i', b'n', b'u', b'x', // metadata
    ];
    assert_eq!(bytes, expected);
    assert_eq!(encode_to_vec(&Pair(0x0102, true)).unwrap(), [2, 1, 1]);
    assert_eq!(encode_to_vec(&Unit).unwrap(), [] as [u8; 0]);
    assert_eq!(encode_to_vec(&Frame::Ping(1)).unwrap(), [0, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode_to_vec(&Frame::Bye).unwrap(), [9]);
    assert_eq!(
        encode_to_vec(&Frame::Data { offset: 2, block: Bytes::from_static(b"xy") }).unwrap(),
        [1, 2, 0, 0, 0, 0, 0, 0, 0, 2, b'x', b'y']
    );
    assert_eq!(encode_to_vec(&Envelope { id: 7, body: Some(Pair(1, false)) }).unwrap(), [7, 1, 1, 0, 0]);
}

#[tokio::test]
async fn every_kind_round_trips() {
    assert_eq!(decode::<Hello>(&encode_to_vec(&hello()).unwrap()).await.unwrap(), hello());
    assert_eq!(decode::<Pair>(&[2, 1, 1]).await.unwrap(), Pair(0x0102, true));
    assert_eq!(decode::<Unit>(&[]).await.unwrap(), Unit);
    for frame in [Frame::Ping(u64::MAX), Frame::Data { offset: 9, block: Bytes::from(vec![5; 70_000]) }, Frame::Bye] {
        assert_eq!(decode::<Frame>(&encode_to_vec(&frame).unwrap()).await.unwrap(), frame);
    }
    let envelope = Envelope { id: 1, body: Some(Frame::Bye) };
    assert_eq!(decode::<Envelope<Frame>>(&encode_to_vec(&envelope).unwrap()).await.unwrap(), envelope);
}

#[tokio::test]
async fn many_messages_follow_each_other_on_one_stream() {
    let mut stream = Vec::new();
    for i in 0..100u64 {
        stream.extend(encode_to_vec(&Frame::Ping(i)).unwrap());
    }
    let mut reader = Reader::with_buffer(16, &stream[..]);
    for i in 0..100u64 {
        assert_eq!(reader.decode::<Frame>().await.unwrap(), Frame::Ping(i));
    }
    let end = reader.decode::<Frame>().await.unwrap_err();
    assert!(end.is_closed(), "{end}");
    assert_eq!(end.to_string(), "Frame: stream closed before the message");
}

#[tokio::test]
async fn a_truncated_message_is_not_a_clean_close() {
    let bytes = encode_to_vec(&hello()).unwrap();
    for len in 1..bytes.len() {
        let err = decode::<Hello>(&bytes[..len]).await.unwrap_err();
        assert_eq!(*err.kind(), DecodeErrorKind::Truncated, "cut at {len}: {err}");
    }
    assert!(decode::<Hello>(&[]).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn errors_name_the_field_path() {
    // protocols[1] claims to be 10,000,000 bytes long. The field's limit (16) bounds the count
    // and every length inside it.
    let mut bytes = vec![0x01, 0x00, 2, 1, b'a'];
    bytes.extend_from_slice(&[0x80, 0xad, 0xe2, 0x04]); // 10,000,000 as a varint
    let err = decode::<Hello>(&bytes).await.unwrap_err();
    assert_eq!(err.to_string(), "Hello.protocols[1]: length 10000000 exceeds max 16");

    let err = decode::<Frame>(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).await.unwrap_err();
    assert_eq!(err.to_string(), "Frame::Data.block: length 4294967295 exceeds max 1048576");
    let err = decode::<Frame>(&[5]).await.unwrap_err();
    assert_eq!(err.to_string(), "Frame: unknown tag 5");
    let err = decode::<Pair>(&[1, 0, 2]).await.unwrap_err();
    assert_eq!(err.to_string(), "Pair.1: bool must be 0 or 1, got 2");
    let bad_map = [&[0x01, 0x00, 0, 0, 2, 1, b'k', 1, b'v', 1, b'k', 1, b'w'][..]].concat();
    let err = decode::<Hello>(&bad_map).await.unwrap_err();
    assert_eq!(err.to_string(), "Hello.metadata[1]: duplicate key");
}

#[tokio::test]
async fn hostile_lengths_are_refused_before_allocating() {
    // A length of u64::MAX.
    let mut bytes = vec![0u8, 1];
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    let err = decode::<Envelope<Vec<u8>>>(&bytes).await.unwrap_err();
    assert_eq!(err.to_string(), "Envelope.body: length 18446744073709551615 exceeds max 1048576");
    // A billion-element Vec, declared in 5 bytes: refused by the length limit.
    #[derive(Debug, Encode, Decode)]
    #[proto(max_len = 2_000_000_000)]
    struct Big {
        items: Vec<u64>,
    }
    let err = decode::<Big>(&[0x80, 0x94, 0xeb, 0xdc, 0x03]).await.unwrap_err();
    // Allowed by max_len, but 8 GB of u64s cannot fit the default 16 MiB budget: the
    // pre-allocation is capped and the stream ends long before.
    assert_eq!(*err.kind(), DecodeErrorKind::Truncated, "{err}");
    // Bytes over the message budget are refused before reading them.
    #[derive(Debug, Encode, Decode)]
    #[proto(max_len = 1_000_000_000, max_bytes = 1024)]
    struct Small {
        block: Bytes,
    }
    let err = decode::<Small>(&[0x80, 0x94, 0xeb, 0xdc, 0x03]).await.unwrap_err();
    assert_eq!(err.to_string(), "Small.block: message needs 1000000005 bytes, over its budget of 1024");
    // An overlong varint.
    let err = decode::<Pair>(&[]).await.unwrap_err();
    assert!(err.is_closed());
    let err = decode::<Frame>(&[0x80, 0x00]).await.unwrap_err();
    assert_eq!(err.to_string(), "Frame: overlong varint");
}

#[test]
fn encoding_refuses_what_decoding_would_refuse() {
    let mut too_many = hello();
    too_many.protocols = vec!["a".into(); 17];
    assert_eq!(
        encode_to_vec(&too_many).unwrap_err(),
        EncodeError::TooLong { field: "Hello.protocols".into(), len: 17, max: 16 }
    );
    let mut too_long = hello();
    too_long.protocols = vec!["ok".into(), "x".repeat(17)];
    assert_eq!(encode_to_vec(&too_long).unwrap_err().to_string(), "Hello.protocols[1]: length 17 exceeds max 16");
}

/// Version 1 of a message, and version 2 which appended a field.
mod evolution {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Encode, Decode)]
    pub struct StatusV1 {
        pub name: String,
    }

    #[derive(Debug, Clone, PartialEq, Encode, Decode)]
    pub struct StatusV2 {
        pub name: String,
        #[proto(default)]
        pub uptime: Duration,
    }
}

#[tokio::test]
async fn a_message_gains_a_trailing_field_without_breaking_older_peers() {
    use evolution::*;
    // New reader, old message: the missing trailing field takes its default.
    let old = encode_to_vec(&StatusV1 { name: "a".into() }).unwrap();
    assert_eq!(decode_from_slice::<StatusV2>(&old).unwrap(), StatusV2 { name: "a".into(), uptime: Duration::ZERO });
    // Old reader, new message: it reads what it knows; the frame's rest is skipped by the
    // caller (warren frames its hello by the stream's end).
    let new = encode_to_vec(&StatusV2 { name: "b".into(), uptime: Duration::from_secs(3) }).unwrap();
    assert_eq!(decode_prefix::<StatusV1>(&new).unwrap(), StatusV1 { name: "b".into() });
    assert!(decode_from_slice::<StatusV1>(&new).is_err(), "a whole-slice decode notices the extra bytes");
    // New to new.
    assert_eq!(decode_from_slice::<StatusV2>(&new).unwrap().uptime, Duration::from_secs(3));
}
