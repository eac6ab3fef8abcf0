//! Encode and Decode for the standard types warren sends.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use tokio::io::AsyncRead;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::{Decode, Encode, EncodeError, Reader, Writer};

macro_rules! fixed_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
                w.put_bytes(&self.to_le_bytes());
                Ok(())
            }
        }
        impl Decode for $t {
            fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
                Some(<$t>::from_le_bytes(b.array()?))
            }
            async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_le_bytes(r.read_array().await?))
            }
        }
    )*};
}

fixed_int!(u16, u32, u64, u128, i8, i16, i32, i64, i128);

impl Encode for u8 {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&[*self]);
        Ok(())
    }

    fn encode_slice(items: &[Self], w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(items);
        Ok(())
    }
}

impl Decode for u8 {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        b.u8()
    }

    fn decode_seq_buffered(b: &mut crate::Buffered<'_>, count: usize) -> Option<Vec<Self>> {
        Some(b.take(count)?.to_vec())
    }

    fn decode_array_buffered<const N: usize>(b: &mut crate::Buffered<'_>) -> Option<[Self; N]> {
        b.array()
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        r.read_u8().await
    }

    async fn decode_seq<R: AsyncRead + Unpin + Send>(
        r: &mut Reader<R>,
        count: usize,
    ) -> Result<Vec<Self>, DecodeError> {
        r.read_vec(count).await
    }

    async fn decode_array<R: AsyncRead + Unpin + Send, const N: usize>(
        r: &mut Reader<R>,
    ) -> Result<[Self; N], DecodeError> {
        r.read_array::<N>().await
    }
}

/// Integers that can travel as LEB128 varints (`#[proto(varint)]`). Signed integers are
/// zigzag-encoded so that small negative numbers stay short.
pub trait VarInt: Sized + Send {
    /// The value as the unsigned number put on the wire.
    fn to_varint(&self) -> u64;
    /// The value back from the wire, or `None` if it does not fit the type.
    fn from_varint(value: u64) -> Option<Self>;

    /// Appends the varint.
    fn encode_varint(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_varint(self.to_varint());
        Ok(())
    }

    /// The fast path of [`VarInt::decode_varint`].
    #[doc(hidden)]
    fn decode_varint_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        Self::from_varint(b.varint()?)
    }

    /// Reads the varint, refusing values that do not fit the type.
    fn decode_varint<R: AsyncRead + Unpin + Send>(
        r: &mut Reader<R>,
    ) -> impl std::future::Future<Output = Result<Self, DecodeError>> + Send {
        async move {
            let value = r.read_varint().await?;
            Self::from_varint(value).ok_or_else(|| {
                DecodeError::invalid(format!("varint {value} out of range for {}", std::any::type_name::<Self>()))
            })
        }
    }
}

macro_rules! unsigned_varint {
    ($($t:ty),*) => {$(
        impl VarInt for $t {
            fn to_varint(&self) -> u64 {
                u64::from(*self)
            }
            fn from_varint(value: u64) -> Option<Self> {
                <$t>::try_from(value).ok()
            }
        }
    )*};
}

unsigned_varint!(u8, u16, u32, u64);

macro_rules! signed_varint {
    ($($t:ty),*) => {$(
        impl VarInt for $t {
            fn to_varint(&self) -> u64 {
                let v = i64::from(*self);
                ((v << 1) ^ (v >> 63)) as u64
            }
            fn from_varint(value: u64) -> Option<Self> {
                let v = ((value >> 1) as i64) ^ -((value & 1) as i64);
                <$t>::try_from(v).ok()
            }
        }
    )*};
}

signed_varint!(i16, i32, i64);

impl Encode for bool {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&[u8::from(*self)]);
        Ok(())
    }
}

impl Decode for bool {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        match b.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        match r.read_u8().await? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::invalid(format!("bool must be 0 or 1, got {other}"))),
        }
    }
}

impl Encode for () {
    fn encode(&self, _: &mut Writer) -> Result<(), EncodeError> {
        Ok(())
    }
}

impl Decode for () {
    fn decode_buffered(_: &mut crate::Buffered<'_>) -> Option<Self> {
        Some(())
    }

    async fn decode<R: AsyncRead + Unpin + Send>(_: &mut Reader<R>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl Encode for str {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_len(self.len())?;
        w.put_bytes(self.as_bytes());
        Ok(())
    }
}

impl Encode for String {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.as_str().encode(w)
    }
}

impl Decode for String {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        let len = b.len()?;
        std::str::from_utf8(b.take(len)?).ok().map(str::to_owned)
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        if let Some(bytes) = r.buffered_len_prefixed() {
            return std::str::from_utf8(bytes?).map(str::to_owned).map_err(|_| DecodeError::invalid("invalid UTF-8"));
        }
        let len = r.read_len().await?;
        let bytes = r.read_vec(len).await?;
        String::from_utf8(bytes).map_err(|_| DecodeError::invalid("invalid UTF-8"))
    }
}

impl<T: Encode> Encode for [T] {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_len(self.len())?;
        T::encode_slice(self, w)
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.as_slice().encode(w)
    }
}

impl<T: Decode + Send> Decode for Vec<T> {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        let count = b.len()?;
        T::decode_seq_buffered(b, count)
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let count = r.read_len().await?;
        T::decode_seq(r, count).await
    }
}

impl<T: Encode + ?Sized> Encode for Box<T> {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        (**self).encode(w)
    }
}

/// `Box<T>` is how a type contains itself (`enum Tree { Leaf, Node(Box<Option<Tree>>) }`): its
/// decoder boxes the inner future, which breaks the recursion in the future's type, and counts
/// nesting so that hostile input cannot nest deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
impl<T: Decode + Send> Decode for Box<T> {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        b.enter()?;
        let value = T::decode_buffered(b);
        b.leave();
        value.map(Box::new)
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        r.enter()?;
        let inner: std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, DecodeError>> + Send + '_>> =
            Box::pin(T::decode(r));
        let value = inner.await;
        r.leave();
        Ok(Box::new(value?))
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        match self {
            None => w.put_bytes(&[0]),
            Some(value) => {
                w.put_bytes(&[1]);
                value.encode(w)?;
            }
        }
        Ok(())
    }
}

impl<T: Decode + Send> Decode for Option<T> {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        match b.u8()? {
            0 => Some(None),
            1 => Some(Some(T::decode_buffered(b)?)),
            _ => None,
        }
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        match r.read_u8().await? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(r).await?)),
            other => Err(DecodeError::invalid(format!("option tag must be 0 or 1, got {other}"))),
        }
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        T::encode_slice(self, w)
    }
}

impl<T: Decode + Send, const N: usize> Decode for [T; N] {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        T::decode_array_buffered::<N>(b)
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        T::decode_array::<R, N>(r).await
    }
}

macro_rules! tuple {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Encode),+> Encode for ($($name,)+) {
            fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
                $( self.$idx.encode(w).map_err(|e| e.in_field(stringify!($idx)))?; )+
                Ok(())
            }
        }
        impl<$($name: Decode + Send),+> Decode for ($($name,)+) {
            fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
                Some(($( $name::decode_buffered(b)?, )+))
            }
            async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
                Ok(($( $name::decode(r).await.map_err(|e| e.in_field(stringify!($idx)))?, )+))
            }
        }
    };
}

tuple!(A 0);
tuple!(A 0, B 1);
tuple!(A 0, B 1, C 2);
tuple!(A 0, B 1, C 2, D 3);
tuple!(A 0, B 1, C 2, D 3, E 4);
tuple!(A 0, B 1, C 2, D 3, E 4, F 5);

impl Encode for bytes::Bytes {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.as_ref().encode(w)
    }
}

impl Decode for bytes::Bytes {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        let len = b.len()?;
        Some(bytes::Bytes::copy_from_slice(b.take(len)?))
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let len = r.read_len().await?;
        Ok(bytes::Bytes::from(r.read_vec(len).await?))
    }
}

/// Types that travel as a fixed number of bytes: `$to` gives them, `$from` takes them back.
macro_rules! fixed_bytes {
    ($($t:ty, $n:literal, $to:expr, $from:expr;)*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
                let to: fn(&$t) -> [u8; $n] = $to;
                w.put_bytes(&to(self));
                Ok(())
            }
        }
        impl Decode for $t {
            fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
                let from: fn([u8; $n]) -> $t = $from;
                Some(from(b.array()?))
            }
            async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
                let from: fn([u8; $n]) -> $t = $from;
                Ok(from(r.read_array().await?))
            }
        }
    )*};
}

fixed_bytes! {
    uuid::Uuid, 16, |u| *u.as_bytes(), uuid::Uuid::from_bytes;
    Ipv4Addr, 4, Ipv4Addr::octets, Ipv4Addr::from;
    Ipv6Addr, 16, Ipv6Addr::octets, Ipv6Addr::from;
}

impl Encode for IpAddr {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        match self {
            IpAddr::V4(ip) => {
                w.put_bytes(&[4]);
                ip.encode(w)
            }
            IpAddr::V6(ip) => {
                w.put_bytes(&[6]);
                ip.encode(w)
            }
        }
    }
}

impl Decode for IpAddr {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        match b.u8()? {
            4 => Some(IpAddr::V4(Ipv4Addr::decode_buffered(b)?)),
            6 => Some(IpAddr::V6(Ipv6Addr::decode_buffered(b)?)),
            _ => None,
        }
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        match r.read_u8().await? {
            4 => Ok(IpAddr::V4(Ipv4Addr::decode(r).await?)),
            6 => Ok(IpAddr::V6(Ipv6Addr::decode(r).await?)),
            tag => Err(DecodeError::new(DecodeErrorKind::UnknownTag(u64::from(tag)))),
        }
    }
}

impl Encode for SocketAddr {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        match self {
            SocketAddr::V4(addr) => {
                w.put_bytes(&[4]);
                addr.ip().encode(w)?;
                addr.port().encode(w)
            }
            SocketAddr::V6(addr) => {
                w.put_bytes(&[6]);
                addr.ip().encode(w)?;
                addr.port().encode(w)?;
                // The scope says which interface a link-local address is on.
                w.put_varint(u64::from(addr.scope_id()));
                Ok(())
            }
        }
    }
}

impl Decode for SocketAddr {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        match b.u8()? {
            4 => {
                let ip = Ipv4Addr::decode_buffered(b)?;
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::decode_buffered(b)?)))
            }
            6 => {
                let ip = Ipv6Addr::decode_buffered(b)?;
                let port = u16::decode_buffered(b)?;
                let scope = u32::try_from(b.varint()?).ok()?;
                Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
            }
            _ => None,
        }
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        match r.read_u8().await? {
            4 => {
                let ip = Ipv4Addr::decode(r).await?;
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::decode(r).await?)))
            }
            6 => {
                let ip = Ipv6Addr::decode(r).await?;
                let port = u16::decode(r).await?;
                let scope = u32::decode_varint(r).await?;
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
            }
            tag => Err(DecodeError::new(DecodeErrorKind::UnknownTag(u64::from(tag)))),
        }
    }
}

impl Encode for Duration {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_varint(self.as_secs());
        w.put_varint(u64::from(self.subsec_nanos()));
        Ok(())
    }
}

impl Decode for Duration {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        let secs = b.varint()?;
        let nanos = u32::try_from(b.varint()?).ok().filter(|n| *n < 1_000_000_000)?;
        Some(Duration::new(secs, nanos))
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let secs = r.read_varint().await?;
        let nanos = r.read_varint().await?;
        if nanos >= 1_000_000_000 {
            return Err(DecodeError::invalid(format!("{nanos} nanoseconds is not under a second")));
        }
        Ok(Duration::new(secs, nanos as u32))
    }
}

fn encode_map<'a, K: Encode + 'a, V: Encode + 'a>(
    len: usize,
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    w: &mut Writer,
) -> Result<(), EncodeError> {
    w.put_len(len)?;
    for (i, (key, value)) in entries.enumerate() {
        key.encode(w).map_err(|e| e.in_field(&format!("[{i}].key")))?;
        value.encode(w).map_err(|e| e.in_field(&format!("[{i}].value")))?;
    }
    Ok(())
}

impl<K: Encode, V: Encode> Encode for BTreeMap<K, V> {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        encode_map(self.len(), self.iter(), w)
    }
}

/// What decoding needs of a map type.
trait DecodeMap<K, V>: Sized {
    fn with_room(count: usize) -> Self;
    /// Inserts; false if the key was there already.
    fn insert_new(&mut self, key: K, value: V) -> bool;
}

impl<K: Ord, V> DecodeMap<K, V> for BTreeMap<K, V> {
    fn with_room(_: usize) -> Self {
        BTreeMap::new()
    }
    fn insert_new(&mut self, key: K, value: V) -> bool {
        self.insert(key, value).is_none()
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> DecodeMap<K, V> for HashMap<K, V, S> {
    fn with_room(count: usize) -> Self {
        HashMap::with_capacity_and_hasher(count, S::default())
    }
    fn insert_new(&mut self, key: K, value: V) -> bool {
        self.insert(key, value).is_none()
    }
}

async fn decode_map<M, K, V, R>(r: &mut Reader<R>) -> Result<M, DecodeError>
where
    M: DecodeMap<K, V> + Send,
    K: Decode + Send,
    V: Decode + Send,
    R: AsyncRead + Unpin + Send,
{
    let count = r.read_len().await?;
    let mut map = M::with_room(r.prealloc(count, 64));
    for i in 0..count {
        let key = K::decode(r).await.map_err(|e| e.in_field("key").at_index(i as u64))?;
        let value = V::decode(r).await.map_err(|e| e.in_field("value").at_index(i as u64))?;
        if !map.insert_new(key, value) {
            return Err(DecodeError::invalid("duplicate key").at_index(i as u64));
        }
    }
    Ok(map)
}

fn decode_map_buffered<M: DecodeMap<K, V>, K: Decode, V: Decode>(b: &mut crate::Buffered<'_>) -> Option<M> {
    let count = b.len()?;
    let mut map = M::with_room(b.prealloc(count, 64));
    for _ in 0..count {
        let key = K::decode_buffered(b)?;
        let value = V::decode_buffered(b)?;
        if !map.insert_new(key, value) {
            return None;
        }
    }
    Some(map)
}

impl<K: Decode + Ord + Send, V: Decode + Send> Decode for BTreeMap<K, V> {
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        decode_map_buffered(b)
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        decode_map(r).await
    }
}

/// Entries of a `HashMap` are written in the map's iteration order, which is not stable:
/// prefer `BTreeMap` where bytes must be reproducible.
impl<K: Encode, V: Encode, S> Encode for HashMap<K, V, S> {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        encode_map(self.len(), self.iter(), w)
    }
}

impl<K, V, S> Decode for HashMap<K, V, S>
where
    K: Decode + Eq + Hash + Send,
    V: Decode + Send,
    S: BuildHasher + Default + Send,
{
    fn decode_buffered(b: &mut crate::Buffered<'_>) -> Option<Self> {
        decode_map_buffered(b)
    }

    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        decode_map(r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, decode_from_slice, encode_to_vec};

    /// A one-field message, to test standard types on their own.
    #[derive(Debug, PartialEq, crate::Encode, crate::Decode)]
    #[proto(max_len = 64)]
    struct One<T> {
        value: T,
    }

    fn bytes_of<T: Encode + Decode + Send>(value: T) -> Vec<u8>
    where
        One<T>: Message,
    {
        encode_to_vec(&One { value }).unwrap()
    }

    fn decode<T: Decode + Encode + Send>(bytes: &[u8]) -> Result<T, String>
    where
        One<T>: Message,
    {
        decode_from_slice::<One<T>>(bytes).map(|one| one.value).map_err(|e| e.to_string())
    }

    #[test]
    fn varints_are_leb128_with_one_encoding_per_value() {
        #[derive(Debug, PartialEq, crate::Encode, crate::Decode)]
        struct V {
            #[proto(varint)]
            u: u64,
            #[proto(varint)]
            i: i32,
        }
        assert_eq!(encode_to_vec(&V { u: 0, i: 0 }).unwrap(), [0, 0]);
        assert_eq!(encode_to_vec(&V { u: 127, i: -1 }).unwrap(), [0x7f, 1]);
        assert_eq!(encode_to_vec(&V { u: 128, i: 1 }).unwrap(), [0x80, 0x01, 2]);
        let max = encode_to_vec(&V { u: u64::MAX, i: i32::MIN }).unwrap();
        assert_eq!(&max[..10], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(decode_from_slice::<V>(&max).unwrap(), V { u: u64::MAX, i: i32::MIN });
        // Overlong, overflowing and out-of-range varints are refused.
        assert_eq!(decode_from_slice::<V>(&[0x80, 0x00, 0]).unwrap_err().to_string(), "V.u: overlong varint");
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0];
        assert_eq!(decode_from_slice::<V>(&overflow).unwrap_err().to_string(), "V.u: varint overflows u64");
        let too_big_for_i32 = [0, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode_from_slice::<V>(&too_big_for_i32).unwrap_err().to_string().contains("out of range for i32"));
    }

    #[test]
    fn fixed_integers_are_little_endian() {
        assert_eq!(bytes_of(0x0102_0304u32), [4, 3, 2, 1]);
        assert_eq!(bytes_of(-2i16), [0xfe, 0xff]);
        assert_eq!(decode::<u64>(&[1, 0, 0, 0, 0, 0, 0, 0]), Ok(1));
    }

    #[test]
    fn hostile_values_of_standard_types_are_refused() {
        assert_eq!(decode::<bool>(&[2]), Err("One.value: bool must be 0 or 1, got 2".into()));
        assert_eq!(decode::<Option<u8>>(&[7]), Err("One.value: option tag must be 0 or 1, got 7".into()));
        assert_eq!(decode::<IpAddr>(&[5]), Err("One.value: unknown tag 5".into()));
        assert_eq!(decode::<SocketAddr>(&[9]), Err("One.value: unknown tag 9".into()));
        assert_eq!(
            decode::<Duration>(&[1, 0x80, 0x94, 0xeb, 0xdc, 0x03]),
            Err("One.value: 1000000000 nanoseconds is not under a second".into())
        );
        assert_eq!(decode::<String>(&[2, 0xc3, 0x28]), Err("One.value: invalid UTF-8".into()));
        assert_eq!(decode::<Vec<u8>>(&[65]), Err("One.value: length 65 exceeds max 64".into()));
        assert_eq!(decode::<BTreeMap<u8, u8>>(&[2, 1, 1, 1, 2]), Err("One.value[1]: duplicate key".into()));
        assert_eq!(decode::<HashMap<u8, u8>>(&[2, 1, 1, 1, 2]), Err("One.value[1]: duplicate key".into()));
        assert_eq!(decode::<u32>(&[1, 2, 3, 4, 5]), Err("One: trailing bytes after the message".into()));
    }

    #[test]
    fn addresses_keep_port_and_scope() {
        let v6: SocketAddr = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 4450, 0, 3));
        let bytes = bytes_of(v6);
        assert_eq!(bytes[0], 6);
        assert_eq!(decode::<SocketAddr>(&bytes), Ok(v6));
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(bytes_of(v4), [4, 10, 0, 0, 1, 80, 0]);
    }

    #[test]
    fn byte_vectors_are_copied_in_bulk_and_bounded_by_the_budget() {
        #[derive(Debug, PartialEq, crate::Encode, crate::Decode)]
        #[proto(max_len = 100000, max_bytes = 1000)]
        struct Blob {
            data: Vec<u8>,
        }
        let blob = Blob { data: vec![7; 500] };
        assert_eq!(decode_from_slice::<Blob>(&encode_to_vec(&blob).unwrap()).unwrap(), blob);
        let big = encode_to_vec(&Blob { data: vec![7; 2000] }).unwrap_err();
        assert_eq!(big.to_string(), "Blob: 2002 bytes exceed the message budget of 1000");
        let err = decode_from_slice::<Blob>(&[0xd0, 0x0f]).unwrap_err();
        assert_eq!(err.to_string(), "Blob.data: message needs 2002 bytes, over its budget of 1000");
    }
}
