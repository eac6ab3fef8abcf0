//! A hostile length prefix reserves nothing its sender has not sent (issue 14, point 7): a
//! counting allocator records the largest allocation while a message that is only a length
//! prefix is decoded from a stream. Before the fix, a 3-byte length on a `Vec<[u8; 256]>`
//! reserved 16 MiB (the whole message budget) and one on a `String` 1 MiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use warren_proto::{Decode, Encode};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only the size is recorded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Debug, Encode, Decode)]
struct Blocks {
    blocks: Vec<[u8; 256]>,
}

#[derive(Debug, Encode, Decode)]
struct Text {
    text: String,
}

#[derive(Debug, Encode, Decode)]
struct Bytes {
    bytes: Vec<u8>,
}

/// LEB128 of `n`.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The largest allocation while decoding a `T` from `bytes` as a stream (it fails: the
/// stream ends after the prefix).
fn largest_allocation<T: warren_proto::Message + std::fmt::Debug>(bytes: &[u8]) -> usize {
    futures_lite::future::block_on(async {
        let mut reader = warren_proto::Reader::new(bytes);
        LARGEST.store(0, Ordering::Relaxed);
        let decoded = reader.decode::<T>().await;
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(decoded.is_err(), "{decoded:?}");
        largest
    })
}

/// One test (the allocator is shared by the whole binary: nothing else runs beside it).
#[test]
fn a_length_prefix_alone_reserves_nothing_it_has_not_received() {
    // The reader's own read-ahead buffer is 16 KiB; nothing may be much bigger than that.
    const BOUND: usize = 64 * 1024;
    let prefix = varint(1_000_000);
    assert_eq!(prefix.len(), 3);
    let sequence = largest_allocation::<Blocks>(&prefix);
    assert!(sequence <= BOUND, "a Vec<[u8; 256]> length reserved {sequence} bytes");
    let string = largest_allocation::<Text>(&prefix);
    assert!(string <= BOUND, "a String length reserved {string} bytes");
    let bytes = largest_allocation::<Bytes>(&prefix);
    assert!(bytes <= BOUND, "a Vec<u8> length reserved {bytes} bytes");
    // What does arrive still decodes, growing as it comes: 300 KiB of a 1 MiB string in a
    // stream cut short allocate about what came, not what was announced.
    let mut partial = varint(1_000_000);
    partial.extend(std::iter::repeat_n(b'a', 300_000));
    let grown = largest_allocation::<Text>(&partial);
    assert!(grown <= 2 * 300_000 + BOUND, "300 KB received, {grown} bytes reserved");
    println!("largest allocations: {sequence} B (Vec<[u8; 256]>), {string} B (String), {grown} B (300 KB of a String)");
}
