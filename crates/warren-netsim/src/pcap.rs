//! Writes packets to a pcap file (nanosecond timestamps, raw IPv4 link type) that tshark,
//! tcpdump and Wireshark open.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Magic number of the nanosecond-resolution pcap format.
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// Link type "raw IPv4".
pub const LINKTYPE_IPV4: u32 = 228;
/// Largest packet stored.
pub const SNAPLEN: u32 = 65_535;

/// A pcap file being written.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&MAGIC_NANOS.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?; // time zone: UTC
        out.write_all(&0u32.to_le_bytes())?; // accuracy
        out.write_all(&SNAPLEN.to_le_bytes())?;
        out.write_all(&LINKTYPE_IPV4.to_le_bytes())?;
        Ok(Self { out })
    }

    /// Appends one packet seen at `at`.
    pub fn write_packet(&mut self, at: SystemTime, packet: &[u8]) -> io::Result<()> {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let stored = &packet[..packet.len().min(SNAPLEN as usize)];
        self.out.write_all(&(since.as_secs() as u32).to_le_bytes())?;
        self.out.write_all(&since.subsec_nanos().to_le_bytes())?;
        self.out.write_all(&(stored.len() as u32).to_le_bytes())?;
        self.out.write_all(&(packet.len() as u32).to_le_bytes())?;
        self.out.write_all(stored)
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads the packets back from a pcap file written by [`PcapWriter`] (for tests and tools);
/// `None` if the bytes are not such a file. Every length is checked against the input.
pub fn read_packets(bytes: &[u8]) -> Option<Vec<(Duration, Vec<u8>)>> {
    let u32_at = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    if u32_at(0)? != MAGIC_NANOS || u32_at(20)? != LINKTYPE_IPV4 {
        return None;
    }
    let mut at = 24;
    let mut packets = Vec::new();
    while at < bytes.len() {
        let (secs, nanos, len) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)? as usize);
        let data = bytes.get(at + 16..at + 16 + len)?;
        packets.push((Duration::new(u64::from(secs), nanos), data.to_vec()));
        at += 16 + len;
    }
    Some(packets)
}

/// Reads a capture file written by the simulator back as parsed IPv4 packets with their
/// timestamps (for tests and tools); `None` if the file cannot be read, is not such a capture,
/// or holds a record that is not an IPv4 packet.
pub fn read_file(path: &std::path::Path) -> Option<Vec<(Duration, crate::packet::Packet)>> {
    let bytes = std::fs::read(path).ok()?;
    read_packets(&bytes)?
        .into_iter()
        .map(|(at, data)| crate::packet::Packet::parse(data).ok().map(|p| (at, p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_header_and_records_that_read_back() {
        let mut writer = PcapWriter::new(Vec::new()).unwrap();
        let at = UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        writer.write_packet(at, b"\x45packet").unwrap();
        let bytes = writer.out;
        assert_eq!(&bytes[..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        assert_eq!(bytes.len(), 24 + 16 + 7);
        let packets = read_packets(&bytes).unwrap();
        assert_eq!(packets, [(Duration::new(1_790_000_000, 123_456_789), b"\x45packet".to_vec())]);
        assert_eq!(read_packets(&bytes[..bytes.len() - 1]), None, "a cut record is refused");
        assert_eq!(read_packets(b"not a pcap file at all, really"), None);
    }
}
