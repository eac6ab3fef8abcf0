//! Builds hellos and stream headers from arbitrary input, and checks that whatever encodes
//! decodes back to the same value (and that what refuses to encode is really over a limit).
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use warren::wire::{self, Hello};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(hello) = (|| -> arbitrary::Result<Hello> {
        Ok(Hello {
            major: wire::WIRE_VERSION_MAJOR,
            minor: u.arbitrary()?,
            metadata: u.arbitrary()?,
            protocols: u.arbitrary()?,
        })
    })() else {
        return;
    };
    match hello.to_bytes() {
        Ok(bytes) => assert_eq!(Hello::from_bytes(&bytes).expect("an encoded hello decodes"), hello),
        Err(_) => assert!(hello.validate().is_err(), "encoding refused a valid hello"),
    }
    if let Ok(name) = u.arbitrary::<String>() {
        if let Ok(bytes) = wire::encode_stream_header(&name) {
            let read = futures_lite::future::block_on(wire::read_stream_header(&mut &bytes[..]));
            assert_eq!(read.expect("an encoded header reads"), name);
        } else {
            assert!(wire::check_protocol_name(&name).is_err());
        }
    }
});
