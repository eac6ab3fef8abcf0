//! The relay over TCP (TLS 1.3, both identities verified as in QUIC), for networks that block
//! UDP. One TLS stream carries records: a two-byte big-endian length, a type byte, a body.
//!
//! ```text
//! type 0: a control message (warren-proto, as on QUIC streams: Request or Response)
//! type 1: a data frame, exactly as in a UDP datagram (see `frame`)
//! ```
//!
//! Requests are answered in order.

use tokio::io::{AsyncRead, AsyncReadExt};
use warren_proto::Message;

use super::control::{self, ControlError};
use super::frame;

/// Record type of a control message.
pub const CONTROL: u8 = 0;
/// Record type of a data frame.
pub const DATA: u8 = 1;

/// Largest record body: a control message; a data frame is at most
/// [`MAX_DATA`].
pub const MAX_RECORD: usize = control::MAX_MESSAGE;

/// Largest data frame in a record: a full UDP data frame.
pub const MAX_DATA: usize = frame::DATA_HEADER_LEN + frame::MAX_PAYLOAD;

/// Records a writer queues before frames are dropped (a slow TCP path acts like a congested
/// link; QUIC's congestion control adapts).
pub const QUEUE: usize = 1024;

/// A record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A control message body.
    Control(Vec<u8>),
    /// A data frame.
    Data(Vec<u8>),
}

/// Encodes a record.
pub fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
    debug_assert!(body.len() <= MAX_RECORD);
    let mut out = Vec::with_capacity(3 + body.len());
    out.extend_from_slice(&((body.len() + 1) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Encodes a control message as a record.
pub fn control<M: Message>(message: &M) -> Result<Vec<u8>, ControlError> {
    let body = warren_proto::encode_to_vec(message).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if body.len() > control::MAX_MESSAGE {
        return Err(ControlError::TooLarge(body.len()));
    }
    Ok(encode(CONTROL, &body))
}

/// Reads one record; refuses lengths over the limit before allocating.
pub async fn read<R: AsyncRead + Unpin>(input: &mut R) -> Result<Record, ControlError> {
    let mut len = [0; 2];
    input.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Err(ControlError::Malformed("empty record".into()));
    }
    if len - 1 > MAX_RECORD {
        return Err(ControlError::TooLarge(len - 1));
    }
    let kind = input.read_u8().await?;
    let mut body = vec![0; len - 1];
    input.read_exact(&mut body).await?;
    match kind {
        CONTROL => Ok(Record::Control(body)),
        DATA if body.len() > MAX_DATA => Err(ControlError::TooLarge(body.len())),
        DATA if frame::is_frame(&body) => Ok(Record::Data(body)),
        DATA => Err(ControlError::Malformed("a data record that is not a frame".into())),
        other => Err(ControlError::Malformed(format!("unknown record type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::wire::control::Request;

    #[tokio::test]
    async fn records_round_trip_and_hostile_ones_are_refused() {
        let id = Identity::generate().to_remote_identity();
        let request = Request::Lookup { id: 7, peer: id };
        let bytes = control(&request).unwrap();
        let Record::Control(body) = read(&mut &bytes[..]).await.unwrap() else { panic!() };
        assert_eq!(control::decode::<Request>(&body).unwrap(), request);
        let data = frame::data(&id, b"quic");
        assert_eq!(read(&mut &encode(DATA, &data)[..]).await.unwrap(), Record::Data(data));
        // Too long, empty, unknown type, a data record that is no frame, truncated.
        assert!(matches!(read(&mut &[0xff, 0xff, 1][..]).await, Err(ControlError::TooLarge(_))));
        assert!(matches!(read(&mut &[0, 0][..]).await, Err(ControlError::Malformed(_))));
        assert!(matches!(read(&mut &encode(7, b"x")[..]).await, Err(ControlError::Malformed(_))));
        assert!(matches!(read(&mut &encode(DATA, b"quic")[..]).await, Err(ControlError::Malformed(_))));
        assert!(matches!(read(&mut &encode(DATA, &frame::data(&id, b"q"))[..5]).await, Err(ControlError::Io(_))));
        let mut huge = ((MAX_RECORD + 2) as u16).to_be_bytes().to_vec();
        huge.push(CONTROL);
        huge.extend(vec![0; MAX_RECORD + 1]);
        assert!(matches!(read(&mut &huge[..]).await, Err(ControlError::TooLarge(_))));
        let big_frame = frame::data(&id, &vec![0; frame::MAX_PAYLOAD + 1]);
        assert!(matches!(read(&mut &encode(DATA, &big_frame)[..]).await, Err(ControlError::TooLarge(_))));
    }
}
