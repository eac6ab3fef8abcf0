//! The frames of warren's stream multiplexer, as they travel inside one encrypted Noise message
//! on a byte-stream transport (TCP, uTP). One message carries one or more frames, back to back.
//!
//! ```text
//! DATA        01 | stream id | length | bytes          (02: the same, and the stream ends)
//! RESET       03 | stream id | code             the sender abandons its half of the stream
//! STOP        04 | stream id | code             the sender will not read: stop sending
//! WINDOW      05 | stream id | max offset       the peer may send the stream's bytes up to this
//! CONN_WINDOW 06 | max offset                   ... and all streams' bytes together up to this
//! STREAMS     07 | kind (0 bi, 1 uni) | count   the peer may open this many streams of the kind
//! CLOSE       08 | code | length | reason       the connection ends
//! PING        09 | id                           asks for a PONG (round-trip time, keep-alive)
//! PONG        0a | id
//! ```
//!
//! Numbers are unsigned LEB128 varints (at most 10 bytes, no overlong encoding). Stream ids say
//! who opened the stream and its kind, as QUIC's do: bit 0 is the opener (0 the dialler, 1 the
//! acceptor), bit 1 the kind (0 bidirectional, 1 unidirectional); each side's ids of a kind
//! count up by 4 from its first. A stream opens with its first DATA (possibly empty) frame; no
//! round trip. Counts and offsets are cumulative, like QUIC's MAX_STREAMS and MAX_STREAM_DATA:
//! a frame that lowers one is ignored.

use std::fmt;

/// Largest plaintext of one Noise transport message (65,535 bytes less its 16-byte tag): no
/// frame, and no message of frames, is longer.
pub const MAX_MESSAGE: usize = 65_535 - 16;

/// Largest reason a CLOSE carries; longer ones are cut.
pub const MAX_REASON: usize = 1024;

const DATA: u8 = 0x01;
const DATA_FIN: u8 = 0x02;
const RESET: u8 = 0x03;
const STOP: u8 = 0x04;
const WINDOW: u8 = 0x05;
const CONN_WINDOW: u8 = 0x06;
const STREAMS: u8 = 0x07;
const CLOSE: u8 = 0x08;
const PING: u8 = 0x09;
const PONG: u8 = 0x0a;

/// Bytes a DATA frame's header takes at most (type, id, length).
pub const MAX_DATA_HEADER: usize = 1 + 10 + 3;

/// The kind of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Both sides send.
    Bi,
    /// Only the opener sends.
    Uni,
}

/// One multiplexer frame, borrowing its bytes from the message.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Stream bytes, in order; `fin` ends the stream.
    Data {
        /// The stream.
        id: u64,
        /// The bytes.
        data: &'a [u8],
        /// The last of the stream.
        fin: bool,
    },
    /// The sender abandoned its sending half.
    Reset {
        /// The stream.
        id: u64,
        /// The application's code.
        code: u64,
    },
    /// The sender stopped reading.
    Stop {
        /// The stream.
        id: u64,
        /// The application's code.
        code: u64,
    },
    /// The peer may send the stream's bytes up to `max` (an offset from its start).
    Window {
        /// The stream.
        id: u64,
        /// The new limit.
        max: u64,
    },
    /// The peer may send all streams' bytes together up to `max`.
    ConnWindow {
        /// The new limit.
        max: u64,
    },
    /// The peer may open `count` streams of `kind` in all (cumulative).
    Streams {
        /// Which streams.
        kind: Kind,
        /// How many, since the connection started.
        count: u64,
    },
    /// The connection ends.
    Close {
        /// The application's code.
        code: u64,
        /// Why, for people.
        reason: &'a [u8],
    },
    /// Asks for a [`Frame::Pong`] with the same id.
    Ping {
        /// Chosen by the sender.
        id: u64,
    },
    /// Answers a [`Frame::Ping`].
    Pong {
        /// The ping's id.
        id: u64,
    },
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Data { id, data, fin } => write!(f, "Data {{ id: {id}, len: {}, fin: {fin} }}", data.len()),
            Frame::Reset { id, code } => write!(f, "Reset {{ id: {id}, code: {code} }}"),
            Frame::Stop { id, code } => write!(f, "Stop {{ id: {id}, code: {code} }}"),
            Frame::Window { id, max } => write!(f, "Window {{ id: {id}, max: {max} }}"),
            Frame::ConnWindow { max } => write!(f, "ConnWindow {{ max: {max} }}"),
            Frame::Streams { kind, count } => write!(f, "Streams {{ kind: {kind:?}, count: {count} }}"),
            Frame::Close { code, reason } => {
                write!(f, "Close {{ code: {code}, reason: {:?} }}", String::from_utf8_lossy(reason))
            }
            Frame::Ping { id } => write!(f, "Ping {{ id: {id} }}"),
            Frame::Pong { id } => write!(f, "Pong {{ id: {id} }}"),
        }
    }
}

/// Why a message's frames could not be read. Every one is the peer breaking the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A type byte no frame has.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The message ends inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// A varint longer than it needs to be, or beyond 64 bits.
    #[error("malformed varint")]
    Varint,
    /// A STREAMS frame of a kind that does not exist.
    #[error("unknown stream kind {0}")]
    Kind(u64),
    /// A CLOSE reason longer than [`MAX_REASON`].
    #[error("close reason of {0} bytes")]
    Reason(u64),
}

/// Reads the frames of one message in turn.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    bytes: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Over the plaintext of one message.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut value = 0u64;
        for (i, &byte) in self.bytes.iter().take(10).enumerate() {
            if i == 9 && byte > 1 {
                return Err(FrameError::Varint);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(FrameError::Varint);
                }
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.bytes.len() >= 10 { FrameError::Varint } else { FrameError::Truncated })
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], FrameError> {
        let len = usize::try_from(len).ok().filter(|len| *len <= self.bytes.len()).ok_or(FrameError::Truncated)?;
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn frame(&mut self) -> Result<Frame<'a>, FrameError> {
        let kind = self.bytes[0];
        self.bytes = &self.bytes[1..];
        Ok(match kind {
            DATA | DATA_FIN => {
                let id = self.varint()?;
                let len = self.varint()?;
                Frame::Data { id, data: self.take(len)?, fin: kind == DATA_FIN }
            }
            RESET => Frame::Reset { id: self.varint()?, code: self.varint()? },
            STOP => Frame::Stop { id: self.varint()?, code: self.varint()? },
            WINDOW => Frame::Window { id: self.varint()?, max: self.varint()? },
            CONN_WINDOW => Frame::ConnWindow { max: self.varint()? },
            STREAMS => {
                let kind = match self.varint()? {
                    0 => Kind::Bi,
                    1 => Kind::Uni,
                    other => return Err(FrameError::Kind(other)),
                };
                Frame::Streams { kind, count: self.varint()? }
            }
            CLOSE => {
                let code = self.varint()?;
                let len = self.varint()?;
                if len > MAX_REASON as u64 {
                    return Err(FrameError::Reason(len));
                }
                Frame::Close { code, reason: self.take(len)? }
            }
            PING => Frame::Ping { id: self.varint()? },
            PONG => Frame::Pong { id: self.varint()? },
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let frame = self.frame();
        if frame.is_err() {
            // One error ends the message: what follows cannot be framed.
            self.bytes = &[];
        }
        Some(frame)
    }
}

/// Appends `value` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

impl Frame<'_> {
    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Frame::Data { id, data, fin } => {
                out.push(if fin { DATA_FIN } else { DATA });
                put_varint(out, id);
                put_varint(out, data.len() as u64);
                out.extend_from_slice(data);
            }
            Frame::Reset { id, code } => {
                out.push(RESET);
                put_varint(out, id);
                put_varint(out, code);
            }
            Frame::Stop { id, code } => {
                out.push(STOP);
                put_varint(out, id);
                put_varint(out, code);
            }
            Frame::Window { id, max } => {
                out.push(WINDOW);
                put_varint(out, id);
                put_varint(out, max);
            }
            Frame::ConnWindow { max } => {
                out.push(CONN_WINDOW);
                put_varint(out, max);
            }
            Frame::Streams { kind, count } => {
                out.push(STREAMS);
                put_varint(out, u64::from(kind == Kind::Uni));
                put_varint(out, count);
            }
            Frame::Close { code, reason } => {
                let reason = &reason[..reason.len().min(MAX_REASON)];
                out.push(CLOSE);
                put_varint(out, code);
                put_varint(out, reason.len() as u64);
                out.extend_from_slice(reason);
            }
            Frame::Ping { id } => {
                out.push(PING);
                put_varint(out, id);
            }
            Frame::Pong { id } => {
                out.push(PONG);
                put_varint(out, id);
            }
        }
    }

    /// Bytes the frame takes encoded.
    pub fn encoded_len(&self) -> usize {
        let mut out = Vec::new();
        self.encode(&mut out);
        out.len()
    }
}

/// Parses every frame of `data` (for the fuzz target): never panics, and what parses encodes
/// back to the same bytes.
pub fn fuzz_frames(data: &[u8]) {
    let mut again = Vec::new();
    let mut consumed = 0;
    for frame in Frames::new(data) {
        let Ok(frame) = frame else { return };
        frame.encode(&mut again);
        consumed = again.len();
    }
    assert_eq!(&again[..], &data[..consumed], "frames re-encode to their bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame<'static>> {
        vec![
            Frame::Data { id: 0, data: b"", fin: false },
            Frame::Data { id: 1 << 40, data: b"hello", fin: true },
            Frame::Reset { id: 4, code: 18 },
            Frame::Stop { id: 5, code: u64::MAX },
            Frame::Window { id: 8, max: 1 << 33 },
            Frame::ConnWindow { max: 65_536 },
            Frame::Streams { kind: Kind::Uni, count: 3 },
            Frame::Streams { kind: Kind::Bi, count: 300 },
            Frame::Close { code: 1, reason: b"wrong identity" },
            Frame::Ping { id: 7 },
            Frame::Pong { id: 7 },
        ]
    }

    #[test]
    fn every_frame_round_trips_back_to_back() {
        let mut message = Vec::new();
        for frame in all() {
            let before = message.len();
            frame.encode(&mut message);
            assert_eq!(message.len() - before, frame.encoded_len());
        }
        let parsed: Vec<_> = Frames::new(&message).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed, all());
        fuzz_frames(&message);
    }

    #[test]
    fn varint_lengths_match_their_encoding() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(Frames::new(&out).varint(), Ok(value));
        }
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        // Truncated everywhere.
        let mut message = Vec::new();
        for frame in all() {
            frame.encode(&mut message);
        }
        for cut in 0..message.len() {
            let _ = Frames::new(&message[..cut]).count();
            fuzz_frames(&message[..cut]);
        }
        // A length beyond the message, an overlong varint, an 11-byte varint, a huge reason.
        assert_eq!(Frames::new(&[DATA, 0, 0xff, 0xff, 0x03]).next(), Some(Err(FrameError::Truncated)));
        assert_eq!(Frames::new(&[PING, 0x80, 0x00]).next(), Some(Err(FrameError::Varint)));
        assert_eq!(
            Frames::new(&[PING, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).next(),
            Some(Err(FrameError::Varint))
        );
        assert_eq!(Frames::new(&[CLOSE, 0, 0x81, 0x08]).next(), Some(Err(FrameError::Reason(1025))));
        assert_eq!(Frames::new(&[STREAMS, 2, 1]).next(), Some(Err(FrameError::Kind(2))));
        assert_eq!(Frames::new(&[0xee]).next(), Some(Err(FrameError::UnknownType(0xee))));
        // An error ends the message.
        let mut frames = Frames::new(&[0xee, PING, 1]);
        assert!(frames.next().unwrap().is_err());
        assert!(frames.next().is_none());
    }
}
