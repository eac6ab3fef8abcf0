//! The `warren/transfer/2` protocol: one request per stream, answered by a header and then raw
//! bytes whose length the header states. Version 2 added `Files`; a provider also answers on
//! [`PROTOCOL_V1`], whose receivers never ask for it (the other requests encode as before). A
//! receiver of this version asks on version 2 only: a provider of version 1 answers that it
//! does not speak it, a clear error rather than a stream dropped at the first `Files`.
//!
//! ```text
//! Manifest { hash }            -> Ok { len } + the manifest's encoding
//! Outboard { hash }            -> Ok { len } + 32 bytes per group of the file (none for one group)
//! Groups { hash, ranges }      -> Ok { len } + the groups' bytes, range by range, in order
//! Files { hashes }             -> Ok { len } + each small file's bytes, in order
//! anything it cannot serve     -> Refused { reason }
//! ```
//!
//! Messages use warren's control framing (a two-byte length, at most 4 KiB). A request asks for
//! at most [`MAX_RANGES`] ranges and [`MAX_GROUPS_PER_REQUEST`] groups, or at most
//! [`MAX_FILES_PER_REQUEST`] files of one group each (16 KiB at most: a small file is checked
//! against its hash alone, so it needs no outboard); the receiver knows every length from the
//! manifest and the outboard, so a sender cannot make it read more than it asked for.

use crate::tree::Hash;

/// The protocol name.
pub const PROTOCOL: &str = "warren/transfer/2";
/// The first version's name, still served (everything but `Files`, which its receivers never
/// ask for).
pub const PROTOCOL_V1: &str = "warren/transfer/1";
/// Most ranges in one request.
pub const MAX_RANGES: usize = 64;
/// Most groups one request asks for (16 MiB).
pub const MAX_GROUPS_PER_REQUEST: u64 = 1024;
/// Most small files one request asks for (1 MiB at most).
pub const MAX_FILES_PER_REQUEST: usize = 64;

/// A receiver's request.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_bytes = 4096)]
pub enum Request {
    /// The manifest with this hash.
    Manifest {
        /// The manifest's hash.
        hash: Hash,
    },
    /// The outboard of the file with this hash.
    Outboard {
        /// The file's hash.
        hash: Hash,
    },
    /// Groups of the file with this hash: each range is `[start, end)` in group indices.
    Groups {
        /// The file's hash.
        hash: Hash,
        /// The ranges.
        #[proto(max_len = 64)]
        ranges: Vec<(u64, u64)>,
    },
    /// Whole small files (one group each: at most 16 KiB), by hash, in this order. Ten thousand
    /// small files cost 157 requests, not ten thousand.
    Files {
        /// The files' hashes.
        #[proto(max_len = 64)]
        hashes: Vec<Hash>,
    },
}

/// A sender's answer, before the bytes.
#[derive(Debug, Clone, PartialEq, Eq, warren_proto::Encode, warren_proto::Decode)]
#[proto(max_bytes = 4096)]
pub enum Response {
    /// `len` bytes follow.
    Ok {
        /// How many.
        len: u64,
    },
    /// Not served, and why.
    Refused {
        /// Why.
        #[proto(max_len = 512)]
        reason: String,
    },
}

/// Why a request is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// No ranges.
    #[error("no ranges asked for")]
    Empty,
    /// A range that is empty, reversed or past the file's end.
    #[error("range {start}..{end} is outside the file's {groups} groups")]
    Outside {
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
        /// The file's groups.
        groups: u64,
    },
    /// Too much in one request.
    #[error("{0} groups in one request, over {MAX_GROUPS_PER_REQUEST}")]
    TooMany(u64),
}

/// Checks a request's ranges against a file of `groups` groups: returns how many groups they
/// hold.
pub fn check_ranges(ranges: &[(u64, u64)], groups: u64) -> Result<u64, RangeError> {
    if ranges.is_empty() {
        return Err(RangeError::Empty);
    }
    let mut total = 0u64;
    for &(start, end) in ranges {
        if start >= end || end > groups {
            return Err(RangeError::Outside { start, end, groups });
        }
        total = total.saturating_add(end - start);
    }
    if total > MAX_GROUPS_PER_REQUEST {
        return Err(RangeError::TooMany(total));
    }
    Ok(total)
}

/// The property the `transfer_wire` fuzz target checks for requests and responses: any bytes
/// decode or are refused without panicking, what decodes encodes back to the same message, and
/// range checks never accept more than the limit.
#[doc(hidden)]
pub fn fuzz_wire(data: &[u8]) {
    if let Ok(request) = warren::wire::control::decode::<Request>(data) {
        let again = warren_proto::encode_to_vec(&request).expect("a decoded request encodes");
        assert_eq!(warren::wire::control::decode::<Request>(&again).expect("and decodes again"), request);
        if let Request::Files { hashes } = &request {
            assert!(hashes.len() <= MAX_FILES_PER_REQUEST);
        }
        if let Request::Groups { ranges, .. } = &request {
            for groups in [0, 1, 1 << 20, u64::MAX] {
                if let Ok(total) = check_ranges(ranges, groups) {
                    assert!(total <= MAX_GROUPS_PER_REQUEST && ranges.iter().all(|(s, e)| s < e && *e <= groups));
                }
            }
        }
    }
    if let Ok(response) = warren::wire::control::decode::<Response>(data) {
        let again = warren_proto::encode_to_vec(&response).expect("a decoded response encodes");
        assert_eq!(warren::wire::control::decode::<Response>(&again).expect("and decodes again"), response);
    }
    crate::manifest::fuzz_manifest(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_outside_the_file_or_over_the_limit_are_refused() {
        assert_eq!(check_ranges(&[(0, 4), (10, 12)], 12), Ok(6));
        assert_eq!(check_ranges(&[], 12), Err(RangeError::Empty));
        assert!(matches!(check_ranges(&[(5, 5)], 12), Err(RangeError::Outside { .. })));
        assert!(matches!(check_ranges(&[(6, 5)], 12), Err(RangeError::Outside { .. })));
        assert!(matches!(check_ranges(&[(0, 13)], 12), Err(RangeError::Outside { .. })));
        assert!(matches!(check_ranges(&[(u64::MAX - 1, u64::MAX)], 12), Err(RangeError::Outside { .. })));
        let many = vec![(0, MAX_GROUPS_PER_REQUEST); 2];
        assert!(matches!(check_ranges(&many, u64::MAX), Err(RangeError::TooMany(_))));
    }

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        let request = Request::Groups { hash: [7; 32], ranges: vec![(0, 3), (9, 10)] };
        let bytes = warren_proto::encode_to_vec(&request).unwrap();
        assert_eq!(warren::wire::control::decode::<Request>(&bytes).unwrap(), request);
        for garbage in [&b""[..], &[0xff; 40], &[2, 0, 0]] {
            assert!(warren::wire::control::decode::<Request>(garbage).is_err());
        }
        // A hostile list of ranges over the field limit does not decode.
        let too_many = Request::Groups { hash: [0; 32], ranges: vec![(0, 1); MAX_RANGES + 1] };
        assert!(warren_proto::encode_to_vec(&too_many).is_err());
        let files = Request::Files { hashes: vec![[3; 32]; MAX_FILES_PER_REQUEST] };
        let bytes = warren_proto::encode_to_vec(&files).unwrap();
        assert!(bytes.len() <= 4096, "the most files fit one control message: {} bytes", bytes.len());
        assert_eq!(warren::wire::control::decode::<Request>(&bytes).unwrap(), files);
        let too_many = Request::Files { hashes: vec![[3; 32]; MAX_FILES_PER_REQUEST + 1] };
        assert!(warren_proto::encode_to_vec(&too_many).is_err());
    }
}
