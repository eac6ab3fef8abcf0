//! Helpers the test suites of warren's crates share. Not part of the API.

/// `len` reproducible pseudo-random bytes from `seed` (xorshift64; any seed, 0 included):
/// payloads whose corruption, loss or reordering a test can detect.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bytes_depend_on_the_seed_alone() {
        let a = super::pseudo_random_bytes(7, 1000);
        assert_eq!(a, super::pseudo_random_bytes(7, 1000));
        assert_ne!(a, super::pseudo_random_bytes(8, 1000));
        assert!(a.iter().any(|&b| b != a[0]), "not constant");
    }
}
