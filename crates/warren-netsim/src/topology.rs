//! The names of a topology's devices and the capture files links write to, shared by the
//! simulation that builds a topology and the forwarder that runs it.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use crate::pcap::PcapWriter;

/// A device of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// A host, by index.
    Host(usize),
    /// A simulated NAT, by index.
    Nat(usize),
    /// A router, by index.
    Router(usize),
    /// A switch, by index.
    Switch(usize),
    /// A kernel NAT (a router namespace running nftables masquerade), by index.
    KernelNat(usize),
}

/// A pcap file shared by the two directions of a captured link or interface.
pub(crate) type Capture = Arc<Mutex<PcapWriter<io::BufWriter<File>>>>;
