//! Any bytes in a request slot: decoding never panics, an accepted request
//! re-encodes to the same value, a rejected one gets an encodable error
//! response (what the memory server sends back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memserver_api::{ClientResponse, Response, SLOT_SIZE, decode_request, encode};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; SLOT_SIZE];
    match decode_request(data) {
        Ok(m) => {
            let bytes = encode(&m, &mut buf).expect("a decoded request re-encodes");
            assert_eq!(decode_request(bytes), Ok(m));
        }
        Err(e) => {
            let r = Response::to_malformed(data, e);
            assert!(matches!(r.body, ClientResponse::Error(_)));
            encode(&r, &mut buf).expect("error responses always encode");
        }
    }
});
