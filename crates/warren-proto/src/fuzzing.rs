//! The property the `proto_paths` fuzz target checks, kept here so that the test suite can
//! replay the saved corpus through it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::future::block_on;

use crate::{Decode, Encode, Reader};

/// A message with every kind of field warren-proto supports.
#[derive(Debug, PartialEq, Encode, Decode)]
#[proto(max_len = 64, max_bytes = 4096)]
pub struct Everything {
    a: u8,
    #[proto(varint)]
    b: i64,
    c: bool,
    d: String,
    e: Vec<u16>,
    f: Option<Box<Everything>>,
    g: [u8; 3],
    h: (u32, String),
    i: bytes::Bytes,
    j: SocketAddr,
    k: Duration,
    l: BTreeMap<String, u8>,
    m: HashMap<u8, bool>,
    n: Kind,
    #[proto(default)]
    o: u64,
}

/// An enum field of [`Everything`].
#[derive(Debug, PartialEq, Encode, Decode)]
pub enum Kind {
    A,
    B(u8),
    #[proto(tag = 7)]
    C {
        x: String,
    },
}

/// Decodes `data` as [`Everything`] on the fast path and on the async path alone: neither may
/// panic, both must agree, and a decoded value must survive a re-encoding.
pub fn decode_paths(data: &[u8]) {
    let fast = block_on(Reader::new(data).decode::<Everything>()).map_err(|e| e.to_string());
    let slow = block_on(Reader::unbuffered(data).decode::<Everything>()).map_err(|e| e.to_string());
    assert_eq!(fast, slow, "the fast and async paths disagree");
    if let Ok(value) = fast {
        // HashMap order is not canonical: compare by decoding the re-encoding instead.
        let bytes = crate::encode_to_vec(&value).expect("a decoded value re-encodes");
        let again = block_on(Reader::new(&bytes[..]).decode::<Everything>()).expect("re-encoding decodes");
        assert_eq!(again, value);
    }
}
