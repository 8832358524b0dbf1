//! Any bytes in a memory server → balloon slot: decoding never panics and an
//! accepted message re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memserver_api::{SLOT_SIZE, decode_to_balloon, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_to_balloon(data) {
        let mut buf = [0u8; SLOT_SIZE];
        let bytes = encode(&m, &mut buf).expect("a decoded message re-encodes");
        assert_eq!(decode_to_balloon(bytes), Ok(m));
    }
});
