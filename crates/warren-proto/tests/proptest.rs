//! decode(encode(x)) == x for every supported type and for derived messages, over arbitrary
//! values; and decoding arbitrary bytes never panics.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use warren_proto::{Decode, Encode, Message, decode_from_slice, encode_to_vec};

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Everything {
    a: u8,
    b: i16,
    #[proto(varint)]
    c: u32,
    #[proto(varint)]
    d: i64,
    e: u128,
    f: bool,
    g: String,
    h: Vec<u16>,
    i: Option<String>,
    j: [u8; 3],
    k: (u8, String, bool),
    l: Bytes,
    m: uuid::Uuid,
    n: IpAddr,
    o: SocketAddr,
    p: Duration,
    q: BTreeMap<String, u32>,
    r: HashMap<u8, Vec<u8>>,
    s: Box<i32>,
    t: (),
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
enum Command {
    Nothing,
    Move(i32, i32),
    Say { text: String, loud: bool },
    Nested(Box<Option<Command>>),
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Wrapper<T>(T, u8);

fn everything() -> impl Strategy<Value = Everything> {
    (
        (any::<u8>(), any::<i16>(), any::<u32>(), any::<i64>(), any::<u128>(), any::<bool>(), ".{0,40}"),
        (
            prop::collection::vec(any::<u16>(), 0..40),
            proptest::option::of(".{0,10}"),
            any::<[u8; 3]>(),
            (any::<u8>(), ".{0,5}", any::<bool>()),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from),
            any::<u128>().prop_map(uuid::Uuid::from_u128),
            any::<IpAddr>(),
        ),
        (
            any::<SocketAddr>().prop_map(|mut a| {
                if let SocketAddr::V6(v6) = &mut a {
                    v6.set_flowinfo(0); // not sent: only address, port and scope travel
                }
                a
            }),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            prop::collection::btree_map(".{0,8}", any::<u32>(), 0..10),
            prop::collection::hash_map(any::<u8>(), prop::collection::vec(any::<u8>(), 0..8), 0..10),
            any::<i32>(),
        ),
    )
        .prop_map(|((a, b, c, d, e, f, g), (h, i, j, k, l, m, n), (o, p, q, r, s))| Everything {
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            i,
            j,
            k,
            l,
            m,
            n,
            o,
            p,
            q,
            r,
            s: Box::new(s),
            t: (),
        })
}

fn command() -> impl Strategy<Value = Command> {
    let leaf = prop_oneof![
        Just(Command::Nothing),
        (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Command::Move(x, y)),
        (".{0,20}", any::<bool>()).prop_map(|(text, loud)| Command::Say { text, loud }),
    ];
    leaf.prop_recursive(4, 16, 2, |inner| proptest::option::of(inner).prop_map(|c| Command::Nested(Box::new(c))))
}

fn round_trip<T: Message + Clone + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = encode_to_vec(value).expect("encodes");
    let back: T = decode_from_slice(&bytes).expect("decodes");
    assert_eq!(&back, value);
}

/// Decodes with the fast path (whole message buffered) and with the async path alone (a reader
/// that never reads ahead); both must agree, values and errors alike.
fn both_paths<T: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<T, String> {
    let fast =
        futures_lite::future::block_on(warren_proto::Reader::new(bytes).decode::<T>()).map_err(|e| e.to_string());
    let slow = futures_lite::future::block_on(warren_proto::Reader::unbuffered(bytes).decode::<T>())
        .map_err(|e| e.to_string());
    assert_eq!(fast, slow, "fast and async paths disagree on {bytes:?}");
    fast
}

proptest! {
    #[test]
    fn fast_and_async_paths_agree_on_valid_messages(value in everything(), command in command()) {
        prop_assert_eq!(both_paths::<Everything>(&encode_to_vec(&value).unwrap()).unwrap(), value);
        prop_assert_eq!(both_paths::<Command>(&encode_to_vec(&command).unwrap()).unwrap(), command);
    }

    #[test]
    fn fast_and_async_paths_agree_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = both_paths::<Everything>(&bytes);
        let _ = both_paths::<Command>(&bytes);
        let _ = both_paths::<Wrapper<Vec<String>>>(&bytes);
    }

    #[test]
    fn everything_round_trips(value in everything()) {
        round_trip(&value);
    }

    #[test]
    fn enums_round_trip(value in command()) {
        round_trip(&value);
        round_trip(&Wrapper(value, 7));
    }

    #[test]
    fn generic_wrappers_round_trip(x in any::<u64>(), s in ".{0,30}") {
        round_trip(&Wrapper(x, 1));
        round_trip(&Wrapper(s, 2));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_from_slice::<Everything>(&bytes);
        let _ = decode_from_slice::<Command>(&bytes);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow(depth in 65usize..5000) {
        // Nested(Some(Nested(Some(… Nothing)))): tag 3, option 1, repeated.
        let mut bytes = [3u8, 1].repeat(depth);
        bytes.push(0);
        let err = decode_from_slice::<Command>(&bytes).unwrap_err();
        prop_assert!(err.to_string().ends_with("nested deeper than 64 levels"), "{}", err);
    }

    #[test]
    fn every_truncation_fails_cleanly(value in everything(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_to_vec(&value).unwrap();
        let at = cut.index(bytes.len());
        prop_assert!(decode_from_slice::<Everything>(&bytes[..at]).is_err());
    }
}
