//! Any bytes in a balloon → memory server slot: decoding never panics, an
//! accepted message re-encodes to the same value, a rejected one gets an
//! encodable refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memserver_api::{SLOT_SIZE, ToBalloon, decode_from_balloon, encode};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; SLOT_SIZE];
    match decode_from_balloon(data) {
        Ok(m) => {
            let bytes = encode(&m, &mut buf).expect("a decoded message re-encodes");
            assert_eq!(decode_from_balloon(bytes), Ok(m));
        }
        Err(e) => {
            let r = ToBalloon::refuse_malformed(data, e);
            encode(&r, &mut buf).expect("refusals always encode");
        }
    }
});
