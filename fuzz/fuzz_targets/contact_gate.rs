//! Arbitrary server names (SNI) at a ContactsOnly node's handshake gate: never a panic, never
//! admitted without the contact's secret.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::transport::gate::fuzz_server_name(data);
});
