//! Arbitrary bytes as a gateway's answer: NAT-PMP/PCP, and UPnP's SSDP answer, HTTP answer,
//! device description and SOAP answer; and as a STUN answer or request (the NAT test). Never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warren::wire::portmap::fuzz_response(data);
    warren::wire::upnp::fuzz_upnp(data);
    warren::wire::stun::fuzz_stun(data);
});
