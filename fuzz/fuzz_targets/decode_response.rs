//! Any bytes in a response slot: decoding never panics and an accepted
//! response re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memserver_api::{SLOT_SIZE, decode_response, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_response(data) {
        let mut buf = [0u8; SLOT_SIZE];
        let bytes = encode(&m, &mut buf).expect("a decoded response re-encodes");
        assert_eq!(decode_response(bytes), Ok(m));
    }
});
