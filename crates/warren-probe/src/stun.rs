//! STUN (RFC 8489) Binding with the RFC 5780 attributes, on top of the `stun-rs` codec, without
//! I/O: building requests, reading responses, and the server's answer to one datagram.

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{
    ChangeRequest, ChangeRequestFlags, OtherAddress, Padding, ResponseOrigin, ResponsePort,
};
use stun_rs::attributes::stun::{Software, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage, StunMessageBuilder, TransactionId,
};

/// Largest datagram the server reads; anything longer is dropped unread.
pub const MAX_DATAGRAM: usize = 2048;

/// Size [`padded_request`] pads to in tests: room for the full answer (with SOFTWARE).
pub const PADDED_SIZE: usize = 160;

/// The server's name in its responses.
pub const SOFTWARE: &str = concat!("warren-probe ", env!("CARGO_PKG_VERSION"));

/// The four sockets of an RFC 5780 server, by (IP, port) choice: primary/alternate each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// On the alternate IP.
    pub alt_ip: bool,
    /// On the alternate port.
    pub alt_port: bool,
}

impl Slot {
    /// The primary address (primary IP, primary port).
    pub const PRIMARY: Slot = Slot { alt_ip: false, alt_port: false };

    /// All four, primary first.
    pub const ALL: [Slot; 4] = [
        Slot::PRIMARY,
        Slot { alt_ip: false, alt_port: true },
        Slot { alt_ip: true, alt_port: false },
        Slot { alt_ip: true, alt_port: true },
    ];

    /// The socket's address, given the primary and alternate addresses.
    pub fn addr(self, primary: SocketAddr, alternate: SocketAddr) -> SocketAddr {
        let ip = if self.alt_ip { alternate.ip() } else { primary.ip() };
        let port = if self.alt_port { alternate.port() } else { primary.port() };
        SocketAddr::new(ip, port)
    }

    /// The socket on the other IP and the other port (OTHER-ADDRESS).
    pub fn other(self) -> Slot {
        Slot { alt_ip: !self.alt_ip, alt_port: !self.alt_port }
    }

    /// Index in [`Slot::ALL`].
    pub fn index(self) -> usize {
        usize::from(self.alt_ip) * 2 + usize::from(self.alt_port)
    }
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    /// CHANGE-REQUEST "change IP".
    pub change_ip: bool,
    /// CHANGE-REQUEST "change port".
    pub change_port: bool,
    /// RESPONSE-PORT: send the response to this port (at the request's source IP).
    pub response_port: Option<u16>,
}

/// Encodes a Binding request, unpadded. (Padded requests make some servers, coturn among them,
/// pad their answers to a full MTU, which then fragment, and NATs often drop fragments.)
pub fn request(tid: [u8; 12], req: Request) -> Vec<u8> {
    padded_request(tid, req, 0)
}

/// Encodes a Binding request padded with PADDING to about `size` bytes (0: no padding).
pub fn padded_request(tid: [u8; 12], req: Request, size: usize) -> Vec<u8> {
    // Header 20, CHANGE-REQUEST 8, RESPONSE-PORT 8 (2 bytes of value, padded to 4), and
    // PADDING's own 4-byte header.
    let unpadded =
        20 + if req.change_ip || req.change_port { 8 } else { 0 } + if req.response_port.is_some() { 8 } else { 0 };
    let room = size.saturating_sub(unpadded + 4) / 4 * 4;
    let mut builder =
        StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(TransactionId::from(tid));
    if req.change_ip || req.change_port {
        let mut flags = enumflags2::BitFlags::empty();
        if req.change_ip {
            flags |= ChangeRequestFlags::ChangeIp;
        }
        if req.change_port {
            flags |= ChangeRequestFlags::ChangePort;
        }
        builder = builder.with_attribute(ChangeRequest::new(Some(flags)));
    }
    if let Some(port) = req.response_port {
        builder = builder.with_attribute(ResponsePort::new(port));
    }
    if room > 0 {
        builder = builder.with_attribute(Padding::new("x".repeat(room)).expect("padding of ASCII"));
    }
    encode(&builder.build()).expect("a padded request encodes")
}

fn encode(message: &StunMessage) -> Result<Vec<u8>, String> {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let len = MessageEncoderBuilder::default().build().encode(&mut buffer, message).map_err(|e| e.to_string())?;
    buffer.truncate(len);
    Ok(buffer)
}

fn decode(datagram: &[u8]) -> Option<StunMessage> {
    if datagram.len() > MAX_DATAGRAM {
        return None;
    }
    let (message, _) = MessageDecoderBuilder::default().build().decode(datagram).ok()?;
    Some(message)
}

/// A Binding success response, as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The transaction it answers.
    pub tid: [u8; 12],
    /// XOR-MAPPED-ADDRESS: where the server saw the request come from.
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS, if the server has a second address (RFC 5780 support).
    pub other: Option<SocketAddr>,
    /// RESPONSE-ORIGIN: where the server sent the response from.
    pub origin: Option<SocketAddr>,
}

/// Reads a Binding success response; None for anything else.
pub fn response(datagram: &[u8]) -> Option<Response> {
    let message = decode(datagram)?;
    if message.method() != BINDING || message.class() != MessageClass::SuccessResponse {
        return None;
    }
    let mapped = *message.get::<XorMappedAddress>()?.as_xor_mapped_address().ok()?.socket_address();
    let other = message.get::<OtherAddress>().and_then(|a| a.as_other_address().ok()).map(|a| *a.socket_address());
    let origin = message.get::<ResponseOrigin>().and_then(|a| a.as_response_origin().ok()).map(|a| *a.socket_address());
    Some(Response { tid: *message.transaction_id().as_bytes(), mapped, other, origin })
}

/// Is `datagram` a Binding request with transaction `tid` (hairpinning test)?
pub fn is_request_for(datagram: &[u8], tid: &[u8; 12]) -> bool {
    decode(datagram).is_some_and(|m| {
        m.method() == BINDING && m.class() == MessageClass::Request && m.transaction_id().as_bytes() == tid
    })
}

/// The server's answer to one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The socket to send from.
    pub from: Slot,
    /// Where to send.
    pub to: SocketAddr,
    /// The response, never longer than the request.
    pub bytes: Vec<u8>,
}

/// An address attribute's size on the wire: header, family and port, address.
fn address_attribute_len(addr: SocketAddr) -> usize {
    4 + 4 + if addr.is_ipv4() { 4 } else { 16 }
}

/// The SOFTWARE attribute's size on the wire: header and value, padded to 4 bytes.
const SOFTWARE_ATTRIBUTE_LEN: usize = 4 + SOFTWARE.len().div_ceil(4) * 4;

/// Largest answer to a request smaller than it: the bare RFC 5780 answer (XOR-MAPPED-ADDRESS,
/// OTHER-ADDRESS, RESPONSE-ORIGIN) for IPv6, 20 + 3 x 24 bytes (56 for IPv4).
pub const BASE_ANSWER_MAX: usize = 20 + 3 * 24;

/// Answers `datagram`, received on socket `on` from `source`. None: not a Binding request.
///
/// Amplification: the answer is never larger than the request, except that the bare RFC 5780
/// answer (XOR-MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN: 56 bytes for IPv4, at most
/// [`BASE_ANSWER_MAX`]) is always given, so that clients sending unpadded 20-byte requests
/// (RFC 3489-era clients, coturn's `turnutils_natdiscovery`) work: at most 2.8 times a 20-byte
/// request, never more whatever the request holds, and no more than its size for a request of
/// 56 bytes or more. SOFTWARE is added only if it fits; PADDING is never echoed. With the
/// per-source rate limit that bounds what a spoofed flood can reflect.
pub fn answer(
    datagram: &[u8],
    on: Slot,
    source: SocketAddr,
    primary: SocketAddr,
    alternate: SocketAddr,
) -> Option<Answer> {
    let request = decode(datagram)?;
    if request.method() != BINDING || request.class() != MessageClass::Request {
        return None;
    }
    let (mut change_ip, mut change_port) = (false, false);
    if let Some(change) = request.get::<ChangeRequest>().and_then(|a| a.as_change_request().ok()) {
        change_ip = change.flags().contains(ChangeRequestFlags::ChangeIp);
        change_port = change.flags().contains(ChangeRequestFlags::ChangePort);
    }
    let from = Slot { alt_ip: on.alt_ip ^ change_ip, alt_port: on.alt_port ^ change_port };
    let port = request.get::<ResponsePort>().and_then(|a| a.as_response_port().ok()).map(|p| p.as_u16());
    let to = SocketAddr::new(source.ip(), port.filter(|p| *p != 0).unwrap_or(source.port()));
    let tid = *request.transaction_id();
    let origin = from.addr(primary, alternate);
    let other = on.other().addr(primary, alternate);
    let mut message = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(tid)
        .with_attribute(XorMappedAddress::from(source))
        .with_attribute(OtherAddress::from(other))
        .with_attribute(ResponseOrigin::from(origin));
    // The full answer (with SOFTWARE) if it fits in the request's size; else the bare RFC 5780
    // one. Sizes are known before encoding, so only one message is encoded.
    let bare_len = 20 + address_attribute_len(source) + address_attribute_len(other) + address_attribute_len(origin);
    if bare_len + SOFTWARE_ATTRIBUTE_LEN <= datagram.len() {
        message = message.with_attribute(Software::new(SOFTWARE).ok()?);
    }
    let bytes = encode(&message.build()).ok()?;
    debug_assert!(bytes.len() == bare_len || bytes.len() == bare_len + SOFTWARE_ATTRIBUTE_LEN);
    debug_assert!(bytes.len() <= datagram.len().max(BASE_ANSWER_MAX));
    Some(Answer { from, to, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr, SocketAddr) {
        ("192.0.2.1:3478".parse().unwrap(), "192.0.2.2:3479".parse().unwrap(), "203.0.113.5:40000".parse().unwrap())
    }

    #[test]
    fn a_padded_request_gets_the_full_answer_from_the_right_socket() {
        let (primary, alternate, client) = addrs();
        let tid = [7; 12];
        let req =
            padded_request(tid, Request { change_ip: true, change_port: false, response_port: None }, PADDED_SIZE);
        assert_eq!(req.len(), PADDED_SIZE);
        let answer = answer(&req, Slot::PRIMARY, client, primary, alternate).unwrap();
        assert_eq!(answer.from, Slot { alt_ip: true, alt_port: false });
        assert_eq!(answer.to, client);
        assert!(answer.bytes.len() <= req.len());
        let resp = response(&answer.bytes).unwrap();
        assert_eq!(resp.tid, tid);
        assert_eq!(resp.mapped, client);
        assert_eq!(resp.other, Some("192.0.2.2:3479".parse().unwrap()));
        assert_eq!(resp.origin, Some("192.0.2.2:3478".parse().unwrap()));
    }

    #[test]
    fn response_port_and_both_changes() {
        let (primary, alternate, client) = addrs();
        let req = request([1; 12], Request { change_ip: true, change_port: true, response_port: Some(5555) });
        assert_eq!(req.len(), 36);
        let answer = answer(&req, Slot::PRIMARY, client, primary, alternate).unwrap();
        assert_eq!(answer.from, Slot { alt_ip: true, alt_port: true });
        assert_eq!(answer.to, "203.0.113.5:5555".parse().unwrap());
        // Received on the alternate socket, the other address is the primary.
        let on_alt = super::answer(&req, Slot { alt_ip: true, alt_port: true }, client, primary, alternate).unwrap();
        assert_eq!(response(&on_alt.bytes).unwrap().other, Some(primary));
    }

    #[test]
    fn hostile_requests_get_nothing_or_no_more_than_they_sent_or_the_bare_answer() {
        let (primary, alternate, client) = addrs();
        let good = padded_request([2; 12], Request::default(), PADDED_SIZE);
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..19].to_vec(),                                          // truncated header
            good[..30].to_vec(),                                          // truncated attribute
            [&good[..4], &[0xde, 0xad, 0xbe, 0xef], &good[8..]].concat(), // wrong magic cookie
            {
                let mut long = good.clone(); // attribute length past the end
                long[22] = 0xff;
                long[23] = 0xff;
                long
            },
            {
                let mut header = good.clone(); // message length past the end
                header[2] = 0x7f;
                header
            },
            vec![0u8; MAX_DATAGRAM + 1],
        ];
        // A request padded with 60,000 bytes: over MAX_DATAGRAM, so not even read.
        let huge = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(Padding::new("p".repeat(60_000)).unwrap())
            .build();
        let mut buffer = vec![0u8; 70_000];
        let len = MessageEncoderBuilder::default().build().encode(&mut buffer, &huge).unwrap();
        assert!(answer(&buffer[..len], Slot::PRIMARY, client, primary, alternate).is_none());
        // A request padded to just under MAX_DATAGRAM: the full answer, far smaller.
        let padded = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_attribute(Padding::new("p".repeat(MAX_DATAGRAM - 40)).unwrap())
            .build();
        let padded = encode(&padded).unwrap();
        let full = answer(&padded, Slot::PRIMARY, client, primary, alternate).unwrap();
        assert_eq!(full.bytes.len(), 56 + SOFTWARE_ATTRIBUTE_LEN);
        cases.push(padded);
        // An unpadded minimal request (20 bytes) gets the bare RFC 5780 answer: 56 bytes.
        let bare = encode(&StunMessageBuilder::new(BINDING, MessageClass::Request).build()).unwrap();
        assert_eq!(bare.len(), 20);
        let bare_answer = answer(&bare, Slot::PRIMARY, client, primary, alternate).unwrap();
        assert_eq!(bare_answer.bytes.len(), 56);
        let parsed = response(&bare_answer.bytes).unwrap();
        assert!(parsed.other.is_some() && parsed.origin.is_some());
        cases.push(bare);
        // Not requests: a success response, an indication.
        let indication = encode(&StunMessageBuilder::new(BINDING, MessageClass::Indication).build()).unwrap();
        cases.push(indication);
        for case in cases {
            if let Some(answer) = answer(&case, Slot::PRIMARY, client, primary, alternate) {
                assert!(answer.bytes.len() <= case.len().max(56), "{} > {}", answer.bytes.len(), case.len());
            }
        }
        assert!(answer(&vec![0u8; MAX_DATAGRAM + 1], Slot::PRIMARY, client, primary, alternate).is_none());
        // Pseudo-random garbage.
        let mut x = 0x9e3779b97f4a7c15u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Some(answer) = answer(&bytes, Slot::PRIMARY, client, primary, alternate) {
                assert!(answer.bytes.len() <= bytes.len().max(56));
            }
        }
    }
}
