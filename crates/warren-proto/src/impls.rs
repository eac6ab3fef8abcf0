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
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        r.read_u8().await
    }

    async fn decode_seq<R: AsyncRead + Unpin + Send>(
        r: &mut Reader<R>,
        count: usize,
    ) -> Result<Vec<Self>, DecodeError> {
        r.read_vec(count).await
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
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
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

impl<T: Decode + Send> Decode for Box<T> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        Ok(Box::new(T::decode(r).await?))
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
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let items = T::decode_seq(r, N).await?;
        Ok(items.try_into().unwrap_or_else(|_| unreachable!("decode_seq returns exactly N items")))
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
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let len = r.read_len().await?;
        Ok(bytes::Bytes::from(r.read_vec(len).await?))
    }
}

impl Encode for uuid::Uuid {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(self.as_bytes());
        Ok(())
    }
}

impl Decode for uuid::Uuid {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        Ok(uuid::Uuid::from_bytes(r.read_array().await?))
    }
}

impl Encode for Ipv4Addr {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&self.octets());
        Ok(())
    }
}

impl Decode for Ipv4Addr {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        Ok(Ipv4Addr::from(r.read_array::<4>().await?))
    }
}

impl Encode for Ipv6Addr {
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put_bytes(&self.octets());
        Ok(())
    }
}

impl Decode for Ipv6Addr {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        Ok(Ipv6Addr::from(r.read_array::<16>().await?))
    }
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

impl<K: Decode + Ord + Send, V: Decode + Send> Decode for BTreeMap<K, V> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let count = r.read_len().await?;
        let mut map = BTreeMap::new();
        for i in 0..count {
            let key = K::decode(r).await.map_err(|e| e.in_field("key").at_index(i as u64))?;
            let value = V::decode(r).await.map_err(|e| e.in_field("value").at_index(i as u64))?;
            if map.insert(key, value).is_some() {
                return Err(DecodeError::invalid("duplicate key").at_index(i as u64));
            }
        }
        Ok(map)
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
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut Reader<R>) -> Result<Self, DecodeError> {
        let count = r.read_len().await?;
        let mut map = HashMap::with_capacity_and_hasher(r.prealloc(count, 64), S::default());
        for i in 0..count {
            let key = K::decode(r).await.map_err(|e| e.in_field("key").at_index(i as u64))?;
            let value = V::decode(r).await.map_err(|e| e.in_field("value").at_index(i as u64))?;
            if map.insert(key, value).is_some() {
                return Err(DecodeError::invalid("duplicate key").at_index(i as u64));
            }
        }
        Ok(map)
    }
}
