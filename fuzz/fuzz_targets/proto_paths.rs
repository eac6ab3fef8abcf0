//! Decodes a message using every kind of field warren-proto supports from arbitrary bytes, on
//! the synchronous fast path (whole message buffered) and on the async path alone (a reader
//! that never reads ahead): neither may panic, and both must give the same value or the same
//! error. A value that decodes must survive a re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren_proto::fuzzing::decode_paths(data);
});
