//! Received UDP buffers sorted into warren frames and QUIC packets (GRO puts several datagrams
//! from one sender into one buffer), shared by the node's socket and the relay server.

use crate::wire::frame::is_frame;

/// Sorts `n` buffers a UDP receive filled: frames (and STUN messages) are taken out, QUIC
/// packets stay for quinn.
///
/// With GRO one buffer holds several datagrams (segments of `stride` bytes) from one sender,
/// so frames and QUIC packets can share a buffer. A buffer holding any frame is handed to
/// `mixed`, segment by segment, and not kept; every other buffer is kept, moved to the front,
/// after `quic` has seen (and may rewrite) its metadata. Returns how many buffers are kept.
pub fn sort_received(
    bufs: &mut [std::io::IoSliceMut<'_>],
    meta: &mut [quinn::udp::RecvMeta],
    n: usize,
    mut mixed: impl FnMut(&quinn::udp::RecvMeta, &mut [u8]),
    mut quic: impl FnMut(&mut quinn::udp::RecvMeta),
) -> usize {
    let mut kept = 0;
    for i in 0..n {
        let len = meta[i].len;
        let stride = meta[i].stride.max(1);
        if bufs[i][..len].chunks(stride).any(|s| is_frame(s) || crate::wire::stun::is_stun(s)) {
            for segment in bufs[i][..len].chunks_mut(stride) {
                mixed(&meta[i], segment);
            }
            continue;
        }
        quic(&mut meta[i]);
        if kept != i {
            let (front, back) = bufs.split_at_mut(i);
            front[kept][..len].copy_from_slice(&back[0][..len]);
            meta[kept] = meta[i];
        }
        kept += 1;
    }
    kept
}
