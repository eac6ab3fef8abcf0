//! NAT-PMP (RFC 6886) and PCP (RFC 6887): the requests warren's port-mapping client sends to
//! its gateway's port [`SERVER_PORT`] for one UDP mapping, and the answers it reads. Only what
//! a client of one UDP mapping needs: NAT-PMP's external-address and UDP-map opcodes, PCP's MAP
//! opcode without options. Answers longer than [`MAX_MESSAGE`] (PCP's limit) are refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

/// The gateway's NAT-PMP and PCP port.
pub const SERVER_PORT: u16 = 5351;
/// The longest PCP message (RFC 6887 §7); NAT-PMP's are at most 16 bytes.
pub const MAX_MESSAGE: usize = 1100;
/// PCP's version number; NAT-PMP is version 0.
pub const PCP_VERSION: u8 = 2;
const NATPMP_OP_EXTERNAL: u8 = 0;
const NATPMP_OP_MAP_UDP: u8 = 1;
const PCP_OP_MAP: u8 = 1;
const RESPONSE_BIT: u8 = 0x80;
const UDP: u8 = 17;
/// PCP's and NAT-PMP's result code for "unsupported version".
pub const UNSUPPORTED_VERSION: u16 = 1;

/// NAT-PMP: "what is your external address?"
pub fn natpmp_external_address() -> [u8; 2] {
    [0, NATPMP_OP_EXTERNAL]
}

/// NAT-PMP: map UDP `internal_port`, asking for `suggested_external` (0: any) for `lifetime`
/// seconds (0 deletes the mapping).
pub fn natpmp_map_udp(internal_port: u16, suggested_external: u16, lifetime: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[1] = NATPMP_OP_MAP_UDP;
    out[4..6].copy_from_slice(&internal_port.to_be_bytes());
    out[6..8].copy_from_slice(&suggested_external.to_be_bytes());
    out[8..12].copy_from_slice(&lifetime.to_be_bytes());
    out
}

/// PCP: MAP UDP `internal` (the client's own address and port), with `nonce` (which the answer
/// must repeat), asking for `suggested` (None: any), for `lifetime` seconds (0 deletes).
pub fn pcp_map_udp(
    internal: SocketAddrV4,
    nonce: [u8; 12],
    suggested: Option<SocketAddrV4>,
    lifetime: u32,
) -> [u8; 60] {
    let mut out = [0u8; 60];
    out[0] = PCP_VERSION;
    out[1] = PCP_OP_MAP;
    out[4..8].copy_from_slice(&lifetime.to_be_bytes());
    out[8..24].copy_from_slice(&internal.ip().to_ipv6_mapped().octets());
    out[24..36].copy_from_slice(&nonce);
    out[36] = UDP;
    out[40..42].copy_from_slice(&internal.port().to_be_bytes());
    let suggested = suggested.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    out[42..44].copy_from_slice(&suggested.port().to_be_bytes());
    out[44..60].copy_from_slice(&suggested.ip().to_ipv6_mapped().octets());
    out
}

/// An answer from the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// NAT-PMP's external address (meaningful when `result` is 0).
    NatPmpExternal {
        /// Result code (0: success).
        result: u16,
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The gateway's external address.
        external: Ipv4Addr,
    },
    /// NAT-PMP's answer to a UDP map request (fields meaningful when `result` is 0).
    NatPmpMap {
        /// Result code (0: success).
        result: u16,
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The internal port mapped.
        internal_port: u16,
        /// The external port given.
        external_port: u16,
        /// Seconds the mapping lasts.
        lifetime: u32,
    },
    /// A version-0 answer with only a header: a NAT-PMP gateway refusing (e.g. our PCP
    /// request, with [`UNSUPPORTED_VERSION`]).
    NatPmpError {
        /// The opcode answered (without the response bit).
        opcode: u8,
        /// Result code.
        result: u16,
    },
    /// PCP's answer to MAP (fields other than `result` and `epoch` meaningful when `result`
    /// is 0).
    PcpMap {
        /// Result code (0: success).
        result: u8,
        /// Seconds the mapping lasts (on an error: how long the error is likely to last).
        lifetime: u32,
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The request's nonce, repeated.
        nonce: [u8; 12],
        /// The protocol mapped (17: UDP).
        protocol: u8,
        /// The internal port mapped.
        internal_port: u16,
        /// The external address and port given (an IPv4 one; None if the gateway gave IPv6).
        external: Option<SocketAddrV4>,
    },
    /// A PCP answer to another opcode, or a PCP error without the MAP body.
    PcpOther {
        /// The opcode answered (without the response bit).
        opcode: u8,
        /// Result code.
        result: u8,
    },
}

/// Why an answer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Longer than [`MAX_MESSAGE`].
    #[error("port-mapping answer too long ({0} bytes)")]
    TooLong(usize),
    /// Shorter than its kind needs.
    #[error("port-mapping answer too short ({0} bytes)")]
    TooShort(usize),
    /// Not an answer (the response bit is clear): another client's request, or our own echoed.
    #[error("not a port-mapping answer")]
    NotAnswer,
    /// Neither NAT-PMP (0) nor PCP (2).
    #[error("unknown port-mapping version {0}")]
    Version(u8),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an answer from the gateway's port 5351.
pub fn parse(b: &[u8]) -> Result<Response, ParseError> {
    if b.len() > MAX_MESSAGE {
        return Err(ParseError::TooLong(b.len()));
    }
    if b.len() < 4 {
        return Err(ParseError::TooShort(b.len()));
    }
    if b[1] & RESPONSE_BIT == 0 {
        return Err(ParseError::NotAnswer);
    }
    let opcode = b[1] & !RESPONSE_BIT;
    match b[0] {
        0 => {
            let result = u16_at(b, 2);
            match opcode {
                NATPMP_OP_EXTERNAL if b.len() >= 12 => {
                    Ok(Response::NatPmpExternal { result, epoch: u32_at(b, 4), external: Ipv4Addr::from(u32_at(b, 8)) })
                }
                NATPMP_OP_MAP_UDP if b.len() >= 16 => Ok(Response::NatPmpMap {
                    result,
                    epoch: u32_at(b, 4),
                    internal_port: u16_at(b, 8),
                    external_port: u16_at(b, 10),
                    lifetime: u32_at(b, 12),
                }),
                _ if result != 0 => Ok(Response::NatPmpError { opcode, result }),
                _ => Err(ParseError::TooShort(b.len())),
            }
        }
        PCP_VERSION => {
            if b.len() < 24 {
                return Err(ParseError::TooShort(b.len()));
            }
            let result = b[3];
            if opcode != PCP_OP_MAP || b.len() < 60 {
                return Ok(Response::PcpOther { opcode, result });
            }
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&b[24..36]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[44..60]);
            let external = Ipv6Addr::from(ip).to_ipv4_mapped().map(|ip| SocketAddrV4::new(ip, u16_at(b, 42)));
            Ok(Response::PcpMap {
                result,
                lifetime: u32_at(b, 4),
                epoch: u32_at(b, 8),
                nonce,
                protocol: b[36],
                internal_port: u16_at(b, 40),
                external,
            })
        }
        version => Err(ParseError::Version(version)),
    }
}

/// A PCP result code's meaning (RFC 6887 §7.4), for error messages.
pub fn pcp_result_name(code: u8) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported version",
        2 => "not authorized",
        3 => "malformed request",
        4 => "unsupported opcode",
        5 => "unsupported option",
        6 => "malformed option",
        7 => "network failure",
        8 => "no resources",
        9 => "unsupported protocol",
        10 => "user exceeded quota",
        11 => "cannot provide external",
        12 => "address mismatch",
        13 => "excessive remote peers",
        _ => "unknown result",
    }
}

/// A NAT-PMP result code's meaning (RFC 6886 §3.5), for error messages.
pub fn natpmp_result_name(code: u16) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported version",
        2 => "not authorized or refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result",
    }
}

/// Fuzzing: arbitrary bytes as an answer. Never panics.
pub fn fuzz_response(data: &[u8]) {
    let _ = parse(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_rfc_layouts() {
        assert_eq!(natpmp_external_address(), [0, 0]);
        assert_eq!(natpmp_map_udp(0x1234, 0x5678, 7200), [0, 1, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x1c, 0x20]);
        let internal = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 4000);
        let m = pcp_map_udp(internal, [7; 12], None, 3600);
        assert_eq!(&m[..4], &[2, 1, 0, 0]);
        assert_eq!(u32_at(&m, 4), 3600);
        assert_eq!(&m[8..24], &Ipv4Addr::new(192, 168, 1, 2).to_ipv6_mapped().octets());
        assert_eq!(&m[24..36], &[7; 12]);
        assert_eq!((m[36], u16_at(&m, 40), u16_at(&m, 42)), (17, 4000, 0));
        assert_eq!(&m[44..60], &Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    }

    #[test]
    fn answers_parse() {
        let mut ext = [0u8; 12];
        ext[..4].copy_from_slice(&[0, 128, 0, 0]);
        ext[4..8].copy_from_slice(&5u32.to_be_bytes());
        ext[8..].copy_from_slice(&[11, 0, 0, 10]);
        assert_eq!(
            parse(&ext),
            Ok(Response::NatPmpExternal { result: 0, epoch: 5, external: Ipv4Addr::new(11, 0, 0, 10) })
        );
        let map = [0, 129, 0, 0, 0, 0, 0, 9, 0x0f, 0xa0, 0x0f, 0xa1, 0, 0, 0x0e, 0x10];
        assert_eq!(
            parse(&map),
            Ok(Response::NatPmpMap { result: 0, epoch: 9, internal_port: 4000, external_port: 4001, lifetime: 3600 })
        );
        assert_eq!(parse(&[0, 129, 0, 1, 0, 0, 0, 0]), Ok(Response::NatPmpError { opcode: 1, result: 1 }));
        let internal = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 4000);
        let mut pcp = pcp_map_udp(internal, [3; 12], Some(SocketAddrV4::new(Ipv4Addr::new(11, 0, 0, 10), 4001)), 60);
        pcp[1] |= RESPONSE_BIT;
        pcp[8..12].copy_from_slice(&77u32.to_be_bytes()); // epoch
        let Ok(Response::PcpMap {
            result: 0,
            lifetime: 60,
            epoch: 77,
            nonce,
            protocol: 17,
            internal_port: 4000,
            external,
        }) = parse(&pcp)
        else {
            panic!("{:?}", parse(&pcp))
        };
        assert_eq!((nonce, external), ([3; 12], Some(SocketAddrV4::new(Ipv4Addr::new(11, 0, 0, 10), 4001))));
    }

    #[test]
    fn hostile_answers_are_refused_without_panic() {
        assert_eq!(parse(&[0; 3]), Err(ParseError::TooShort(3)));
        assert_eq!(
            parse(&vec![2u8, 0x81].into_iter().chain([0; 1200]).collect::<Vec<_>>()),
            Err(ParseError::TooLong(1202))
        );
        // Our own request echoed back (response bit clear).
        assert_eq!(parse(&natpmp_map_udp(1, 2, 3)), Err(ParseError::NotAnswer));
        assert_eq!(parse(&[1, 0x80, 0, 0]), Err(ParseError::Version(1)));
        // A successful NAT-PMP map answer cut short.
        assert_eq!(parse(&[0, 129, 0, 0, 0, 0, 0, 9]), Err(ParseError::TooShort(8)));
        // A PCP header without its MAP body.
        assert_eq!(
            parse(&[&[2u8, 0x81, 0, 8][..], &[0; 20]].concat()),
            Ok(Response::PcpOther { opcode: 1, result: 8 })
        );
        for len in 0..80 {
            for fill in [0u8, 0x80, 0xff] {
                let mut b = vec![fill; len];
                if len > 1 {
                    b[0] = if fill == 0 { 0 } else { 2 };
                }
                fuzz_response(&b);
            }
        }
    }
}
