//! Round trips, the largest message of each kind against SLOT_SIZE, and
//! garbage that must be rejected without a panic.

use super::*;
use proptest::prelude::*;
use std::vec::Vec as StdVec;

fn block() -> impl Strategy<Value = Block> {
    (0..=MAX_ORDER).prop_flat_map(|order| {
        (0..=(MAX_PFN >> order)).prop_map(move |n| Block {
            pfn: n << order,
            order,
        })
    })
}

fn blocks() -> impl Strategy<Value = Vec<Block, BATCH>> {
    proptest::collection::vec(block(), 0..=BATCH)
        .prop_map(|v| v.into_iter().collect::<Vec<Block, BATCH>>())
}

fn client_error() -> impl Strategy<Value = ClientError> {
    prop_oneof![
        Just(ClientError::NoMemory),
        Just(ClientError::InvalidOrder),
        Just(ClientError::NotAllocated),
        Just(ClientError::WrongZone),
        Just(ClientError::Misaligned),
        Just(ClientError::WrongOrder),
        Just(ClientError::Busy),
        Just(ClientError::Malformed),
        Just(ClientError::UnsupportedVersion),
        Just(ClientError::Overloaded),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        (0..=MAX_ORDER).prop_map(|order| ClientRequest::Alloc { order }),
        block().prop_map(ClientRequest::Free),
        blocks().prop_map(ClientRequest::FreeBatch),
        Just(ClientRequest::Stats),
    ];
    (any::<u32>(), body).prop_map(|(tag, body)| Request { tag, body })
}

fn stats() -> impl Strategy<Value = ClientStats> {
    any::<[u64; 6]>().prop_map(|s| ClientStats {
        total_pages: s[0],
        allocated_pages: s[1],
        free_pages: s[2],
        reported_pages: s[3],
        busy_pages: s[4],
        errors: s[5],
    })
}

fn response() -> impl Strategy<Value = Response> {
    let body = prop_oneof![
        block().prop_map(ClientResponse::Allocated),
        any::<u16>().prop_map(|count| ClientResponse::Freed { count }),
        (any::<u16>(), any::<u16>(), any::<u16>(), client_error()).prop_map(
            |(freed, failed, first, error)| ClientResponse::BatchFailed {
                freed,
                failed,
                first,
                error
            }
        ),
        stats().prop_map(ClientResponse::Stats),
        client_error().prop_map(ClientResponse::Error),
    ];
    (any::<Option<u32>>(), body).prop_map(|(tag, body)| match (tag, body) {
        (None, ClientResponse::Error(e)) => Response {
            tag: None,
            body: ClientResponse::Error(e),
        },
        (tag, body) => Response {
            tag: Some(tag.unwrap_or(0)),
            body,
        },
    })
}

fn mem_stats() -> impl Strategy<Value = MemStats> {
    any::<[u64; 8]>().prop_map(|s| MemStats {
        total_pages: s[0],
        free_pages: s[1],
        available_pages: s[2],
        reported_pages: s[3],
        isolated_pages: s[4],
        ballooned_pages: s[5],
        reports_done: s[6],
        reports_failed: s[7],
    })
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::NoMemory),
        Just(RefuseReason::NotBallooned),
        Just(RefuseReason::Busy),
        Just(RefuseReason::Malformed),
        Just(RefuseReason::UnsupportedVersion),
        Just(RefuseReason::UnknownId),
    ]
}

fn to_balloon() -> impl Strategy<Value = ToBalloon> {
    prop_oneof![
        (any::<u32>(), blocks()).prop_map(|(batch, blocks)| ToBalloon::Report { batch, blocks }),
        (any::<u32>(), blocks(), any::<bool>())
            .prop_map(|(req, blocks, last)| ToBalloon::Inflated { req, blocks, last }),
        (any::<u32>(), any::<u32>()).prop_map(|(req, pages)| ToBalloon::Deflated { req, pages }),
        mem_stats().prop_map(ToBalloon::Stats),
        (any::<Option<u32>>(), refuse_reason())
            .prop_map(|(req, reason)| ToBalloon::Refused { req, reason }),
        (any::<u32>(), 0..=MAX_PFN, 0..=MAX_PFN).prop_map(|(pages, first_pfn, end_pfn)| {
            ToBalloon::Reclaim {
                pages,
                first_pfn,
                end_pfn,
            }
        }),
        (
            0..TunableKey::ALL.len(),
            any::<u64>(),
            prop_oneof![
                Just(None),
                Just(Some(TunableRefusal::OutOfRange)),
                Just(Some(TunableRefusal::ReportingOff))
            ]
        )
            .prop_map(|(k, value, refused)| ToBalloon::TunableSet {
                key: TunableKey::ALL[k],
                value,
                refused
            }),
    ]
}

fn from_balloon() -> impl Strategy<Value = FromBalloon> {
    prop_oneof![
        (any::<u32>(), any::<bool>()).prop_map(|(batch, ok)| FromBalloon::ReportDone { batch, ok }),
        (any::<u32>(), any::<u32>()).prop_map(|(req, pages)| FromBalloon::Inflate { req, pages }),
        (any::<u32>(), blocks()).prop_map(|(req, blocks)| FromBalloon::Deflate { req, blocks }),
        (any::<u32>(), blocks()).prop_map(|(req, blocks)| FromBalloon::Released { req, blocks }),
        Just(FromBalloon::StatsRequest),
        Just(FromBalloon::DeviceReset),
        any::<u16>().prop_map(|report_capacity| FromBalloon::DeviceLimits { report_capacity }),
        (0..TunableKey::ALL.len(), any::<u64>()).prop_map(|(k, value)| FromBalloon::SetTunable {
            key: TunableKey::ALL[k],
            value
        }),
    ]
}

fn from_control() -> impl Strategy<Value = FromControl> {
    (0..TunableKey::ALL.len(), any::<u64>()).prop_map(|(k, value)| FromControl::SetTunable {
        key: TunableKey::ALL[k],
        value,
    })
}

fn to_control() -> impl Strategy<Value = ToControl> {
    let refusal = prop_oneof![
        Just(None),
        Just(Some(TunableRefusal::OutOfRange)),
        Just(Some(TunableRefusal::ReportingOff)),
    ];
    prop_oneof![
        (0..TunableKey::ALL.len(), any::<u64>(), refusal).prop_map(|(k, value, refused)| {
            ToControl::TunableSet {
                key: TunableKey::ALL[k],
                value,
                refused,
            }
        }),
        prop_oneof![
            Just(RefuseReason::Malformed),
            Just(RefuseReason::UnsupportedVersion)
        ]
        .prop_map(|reason| ToControl::Refused { reason }),
    ]
}

fn roundtrip<M: Message + PartialEq + core::fmt::Debug>(m: &M) -> Result<(), TestCaseError> {
    let mut buf = [0u8; SLOT_SIZE];
    let bytes = encode(m, &mut buf).map_err(|e| TestCaseError::fail(std::format!("{e}")))?;
    prop_assert_eq!(bytes[0], VERSION);
    prop_assert!(bytes.len() <= SLOT_SIZE);
    prop_assert_eq!(&decode::<M>(bytes).unwrap(), m);
    // Any strict prefix is rejected, never a different message.
    for cut in 0..bytes.len() {
        prop_assert!(decode::<M>(&bytes[..cut]).is_err());
    }
    // One byte more is rejected as trailing.
    let mut longer: StdVec<u8> = bytes.to_vec();
    longer.push(0);
    prop_assert_eq!(decode::<M>(&longer), Err(DecodeError::TrailingBytes));
    Ok(())
}

/// Decoding garbage must not panic, and whatever it accepts re-encodes to
/// bytes that decode to the same value.
fn garbage<M: Message + PartialEq + core::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = decode::<M>(bytes) {
        let mut buf = [0u8; SLOT_SIZE];
        let again = encode(&m, &mut buf).expect("a decoded message re-encodes");
        prop_assert_eq!(decode::<M>(again), Ok(m));
    }
    Ok(())
}

proptest! {
    #[test]
    fn requests_roundtrip(m in request()) { roundtrip(&m)?; }
    #[test]
    fn responses_roundtrip(m in response()) { roundtrip(&m)?; }
    #[test]
    fn to_balloon_roundtrips(m in to_balloon()) { roundtrip(&m)?; }
    #[test]
    fn from_balloon_roundtrips(m in from_balloon()) { roundtrip(&m)?; }
    #[test]
    fn from_control_roundtrips(m in from_control()) { roundtrip(&m)?; }
    #[test]
    fn to_control_roundtrips(m in to_control()) { roundtrip(&m)?; }

    #[test]
    fn garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600), version in prop_oneof![Just(VERSION), any::<u8>()]) {
        let mut bytes = StdVec::with_capacity(tail.len() + 1);
        bytes.push(version);
        bytes.extend_from_slice(&tail);
        garbage::<Request>(&bytes)?;
        garbage::<Response>(&bytes)?;
        garbage::<ToBalloon>(&bytes)?;
        garbage::<FromBalloon>(&bytes)?;
        garbage::<FromControl>(&bytes)?;
        // The error answers are always encodable.
        if let Err(e) = decode_request(&bytes) {
            let r = Response::to_malformed(&bytes, e);
            prop_assert!(matches!(r.body, ClientResponse::Error(_)));
            encode(&r, &mut [0u8; SLOT_SIZE]).unwrap();
        }
        if let Err(e) = decode_from_balloon(&bytes) {
            let r = ToBalloon::refuse_malformed(&bytes, e);
            encode(&r, &mut [0u8; SLOT_SIZE]).unwrap();
        }
    }

    /// Flipping bytes of a valid request never panics, and the tag of the
    /// error answer, when recovered, is the one on the wire.
    #[test]
    fn mutated_requests(m in request(), at in any::<usize>(), byte in any::<u8>()) {
        let mut buf = [0u8; SLOT_SIZE];
        let mut bytes = encode(&m, &mut buf).unwrap().to_vec();
        let i = at % bytes.len();
        bytes[i] = byte;
        garbage::<Request>(&bytes)?;
        if let Err(e) = decode_request(&bytes) {
            let r = Response::to_malformed(&bytes, e);
            if let Some(tag) = r.tag {
                prop_assert_eq!(postcard::take_from_bytes::<u32>(&bytes[1..]).unwrap().0, tag);
            }
        }
    }
}

fn largest_block() -> Block {
    // The largest varint: the highest aligned order-0 frame.
    Block {
        pfn: MAX_PFN,
        order: 0,
    }
}

fn full_batch() -> Vec<Block, BATCH> {
    core::iter::repeat_n(largest_block(), BATCH).collect()
}

/// The largest encoding of every message fits a slot; prints the sizes.
#[test]
fn largest_messages_fit_a_slot() {
    let mut buf = [0u8; SLOT_SIZE];
    let mut largest = 0;
    let mut check = |name: &str, len: usize| {
        std::println!("{name}: {len} bytes");
        assert!(len <= SLOT_SIZE, "{name} is {len} bytes");
        largest = largest.max(len);
    };
    let max_stats = ClientStats {
        total_pages: u64::MAX,
        allocated_pages: u64::MAX,
        free_pages: u64::MAX,
        reported_pages: u64::MAX,
        busy_pages: u64::MAX,
        errors: u64::MAX,
    };
    let requests = [
        ClientRequest::Alloc { order: MAX_ORDER },
        ClientRequest::Free(largest_block()),
        ClientRequest::FreeBatch(full_batch()),
        ClientRequest::Stats,
    ];
    for body in requests {
        let r = Request {
            tag: u32::MAX,
            body,
        };
        check("request", encode(&r, &mut buf).unwrap().len());
    }
    let responses = [
        ClientResponse::Allocated(largest_block()),
        ClientResponse::Freed { count: u16::MAX },
        ClientResponse::BatchFailed {
            freed: u16::MAX,
            failed: u16::MAX,
            first: u16::MAX,
            error: ClientError::Overloaded,
        },
        ClientResponse::Stats(max_stats),
        ClientResponse::Error(ClientError::Overloaded),
    ];
    for body in responses {
        let r = Response {
            tag: Some(u32::MAX),
            body,
        };
        check("response", encode(&r, &mut buf).unwrap().len());
    }
    let max_mem = MemStats {
        total_pages: u64::MAX,
        free_pages: u64::MAX,
        available_pages: u64::MAX,
        reported_pages: u64::MAX,
        isolated_pages: u64::MAX,
        ballooned_pages: u64::MAX,
        reports_done: u64::MAX,
        reports_failed: u64::MAX,
    };
    let to = [
        ToBalloon::Report {
            batch: u32::MAX,
            blocks: full_batch(),
        },
        ToBalloon::Inflated {
            req: u32::MAX,
            blocks: full_batch(),
            last: true,
        },
        ToBalloon::Deflated {
            req: u32::MAX,
            pages: u32::MAX,
        },
        ToBalloon::Stats(max_mem),
        ToBalloon::Refused {
            req: Some(u32::MAX),
            reason: RefuseReason::UnknownId,
        },
    ];
    for m in to {
        check("to balloon", encode(&m, &mut buf).unwrap().len());
    }
    let from = [
        FromBalloon::ReportDone {
            batch: u32::MAX,
            ok: true,
        },
        FromBalloon::Inflate {
            req: u32::MAX,
            pages: u32::MAX,
        },
        FromBalloon::Deflate {
            req: u32::MAX,
            blocks: full_batch(),
        },
        FromBalloon::Released {
            req: u32::MAX,
            blocks: full_batch(),
        },
        FromBalloon::StatsRequest,
        FromBalloon::DeviceReset,
        FromBalloon::DeviceLimits {
            report_capacity: u16::MAX,
        },
    ];
    for m in from {
        check("from balloon", encode(&m, &mut buf).unwrap().len());
    }
    // Well under a slot: room for growth.
    assert_eq!(largest, MAX_ENCODED_LEN);
}

#[test]
fn version_empty_and_trailing_bytes() {
    assert_eq!(decode_request(&[]), Err(DecodeError::Empty));
    let mut buf = [0u8; SLOT_SIZE];
    let stats = Request {
        tag: 7,
        body: ClientRequest::Stats,
    };
    let bytes = encode(&stats, &mut buf).unwrap().to_vec();
    assert_eq!(bytes, [VERSION, 7, 3]);
    assert_eq!(
        decode_request(&[2, 7, 3]),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        decode_request(&[VERSION, 7, 3, 0]),
        Err(DecodeError::TrailingBytes)
    );
    // Unknown variant index 4.
    assert_eq!(
        decode_request(&[VERSION, 7, 4]),
        Err(DecodeError::Malformed)
    );
    // A batch longer than BATCH is malformed, not truncated.
    let mut long = std::vec![VERSION, 7, 2, BATCH as u8 + 1];
    for _ in 0..=BATCH {
        long.extend_from_slice(&[0, 0]);
    }
    assert_eq!(decode_request(&long), Err(DecodeError::Malformed));
    assert_eq!(encode(&stats, &mut []), Err(EncodeError::BufferTooSmall));
    assert_eq!(
        encode(&stats, &mut [0; 2]),
        Err(EncodeError::BufferTooSmall)
    );
}

#[test]
fn out_of_range_values_are_rejected_both_ways() {
    let mut buf = [0u8; SLOT_SIZE];
    // Alloc { order: 11 } written by hand: tag 1, variant 0, order 11.
    assert_eq!(
        decode_request(&[VERSION, 1, 0, 11]),
        Err(DecodeError::OutOfRange(RangeError::Order(11)))
    );
    let bad = Request {
        tag: 1,
        body: ClientRequest::Free(Block { pfn: 0, order: 200 }),
    };
    assert_eq!(
        encode(&bad, &mut buf),
        Err(EncodeError::OutOfRange(RangeError::Order(200)))
    );
    // A block running past the last frame.
    let past = Block {
        pfn: MAX_PFN,
        order: 1,
    };
    let msg = FromBalloon::Deflate {
        req: 3,
        blocks: [past].into_iter().collect(),
    };
    assert_eq!(
        encode(&msg, &mut buf),
        Err(EncodeError::OutOfRange(RangeError::Pfn(MAX_PFN)))
    );
    let edge = Block {
        pfn: MAX_PFN - 1,
        order: 1,
    };
    assert!(
        encode(
            &FromBalloon::Deflate {
                req: 3,
                blocks: [edge].into_iter().collect()
            },
            &mut buf
        )
        .is_ok()
    );
    // u64::MAX pfn, order 10: overflow is a range error, not a panic.
    let huge = [
        VERSION, 1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 10,
    ];
    assert_eq!(
        decode_request(&huge),
        Err(DecodeError::OutOfRange(RangeError::Pfn(u64::MAX)))
    );
    // An untagged success is not a response.
    let untagged = Response {
        tag: None,
        body: ClientResponse::Freed { count: 1 },
    };
    assert_eq!(
        encode(&untagged, &mut buf),
        Err(EncodeError::OutOfRange(RangeError::UntaggedSuccess))
    );
    assert_eq!(
        decode_response(&[VERSION, 0, 1, 1]),
        Err(DecodeError::OutOfRange(RangeError::UntaggedSuccess))
    );
}

#[test]
fn malformed_requests_get_error_responses() {
    // Tag readable, body garbage: the client gets its tag back.
    let r = Response::to_malformed(&[VERSION, 0x2a, 9], DecodeError::Malformed);
    assert_eq!(
        r,
        Response {
            tag: Some(42),
            body: ClientResponse::Error(ClientError::Malformed)
        }
    );
    // Future version: nothing after the version byte is trusted.
    let bytes = [9, 0x2a, 3];
    let e = decode_request(&bytes).unwrap_err();
    assert_eq!(
        Response::to_malformed(&bytes, e),
        Response {
            tag: None,
            body: ClientResponse::Error(ClientError::UnsupportedVersion)
        }
    );
    // Damaged tag varint.
    let bytes = [VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let e = decode_request(&bytes).unwrap_err();
    assert_eq!(Response::to_malformed(&bytes, e).tag, None);
    // Out-of-range order answers InvalidOrder with the tag.
    let bytes = [VERSION, 5, 0, 11];
    let e = decode_request(&bytes).unwrap_err();
    assert_eq!(
        Response::to_malformed(&bytes, e),
        Response {
            tag: Some(5),
            body: ClientResponse::Error(ClientError::InvalidOrder)
        }
    );
    // Balloon side: an Inflate with a truncated page count names its req.
    let bytes = [VERSION, 2, 17, 0xff];
    let e = decode_from_balloon(&bytes).unwrap_err();
    assert_eq!(
        ToBalloon::refuse_malformed(&bytes, e),
        ToBalloon::Refused {
            req: Some(17),
            reason: RefuseReason::Malformed
        }
    );
    // A ReportDone has a batch, not a req: no id in the refusal.
    let bytes = [VERSION, 0, 17, 2];
    let e = decode_from_balloon(&bytes).unwrap_err();
    assert_eq!(
        ToBalloon::refuse_malformed(&bytes, e),
        ToBalloon::Refused {
            req: None,
            reason: RefuseReason::Malformed
        }
    );
}

#[test]
fn errors_display() {
    use std::string::ToString;
    assert_eq!(
        DecodeError::UnsupportedVersion(2).to_string(),
        "protocol version 2, expected 1"
    );
    assert_eq!(
        DecodeError::OutOfRange(RangeError::Order(11)).to_string(),
        "value out of range: block order 11 above 10"
    );
    assert_eq!(
        ClientError::NotAllocated.to_string(),
        "block not allocated to this client"
    );
    assert_eq!(
        RefuseReason::NotBallooned.to_string(),
        "block is not in the balloon"
    );
    assert_eq!(
        EncodeError::BufferTooSmall.to_string(),
        "output buffer too small for the message"
    );
    assert_eq!(Block { pfn: 0, order: 10 }.pages(), 1024);
    assert_eq!(Block { pfn: 0, order: 200 }.pages(), u64::MAX);
}

/// The largest VM report fits a slot, round-trips, and a range past the
/// address space is refused on both sides.
#[test]
fn vm_reports_fit_and_round_trip() {
    let mut buf = [0u8; SLOT_SIZE];
    let big = VmRange {
        page: MAX_PFN / 2,
        pages: MAX_PFN / 2,
    };
    let msg = FromVmm::Report {
        id: u32::MAX,
        ranges: core::iter::repeat_n(big, VM_REPORT_RANGES).collect(),
    };
    let bytes = encode(&msg, &mut buf).unwrap().to_vec();
    std::println!("largest VM report: {} bytes", bytes.len());
    assert_eq!(decode_from_vmm(&bytes), Ok(msg));
    let past = FromVmm::Report {
        id: 7,
        ranges: core::iter::once(VmRange {
            page: MAX_PFN,
            pages: 2,
        })
        .collect(),
    };
    assert_eq!(
        encode(&past, &mut buf),
        Err(EncodeError::OutOfRange(RangeError::Pfn(MAX_PFN)))
    );
    // Hand-made, as a hostile VMM would send it: refused with its id.
    let mut raw = [0u8; 64];
    let n = postcard::to_slice(&past, &mut raw[1..]).unwrap().len();
    raw[0] = VERSION;
    let e = decode_from_vmm(&raw[..1 + n]).unwrap_err();
    assert_eq!(e, DecodeError::OutOfRange(RangeError::Pfn(MAX_PFN)));
    assert_eq!(
        ToVmm::refuse_malformed(&raw[..1 + n], e),
        ToVmm::Refused {
            id: Some(7),
            reason: VmRefuse::Malformed
        }
    );
    for m in [
        ToVmm::ReportDone {
            id: u32::MAX,
            ok: true,
        },
        ToVmm::Refused {
            id: None,
            reason: VmRefuse::NoReporting,
        },
    ] {
        let b = encode(&m, &mut buf).unwrap().to_vec();
        assert_eq!(decode_to_vmm(&b), Ok(m));
    }
}

/// The VM balloon's messages fit a slot and round-trip; a damaged one is
/// refused as a balloon message, never as some report's refusal.
#[test]
fn vm_balloon_messages_fit_and_round_trip() {
    let mut buf = [0u8; SLOT_SIZE];
    let big = VmRange {
        page: MAX_PFN / 2,
        pages: MAX_PFN / 2,
    };
    let ranges: Vec<VmRange, VM_REPORT_RANGES> =
        core::iter::repeat_n(big, VM_REPORT_RANGES).collect();
    let stats = VmStats {
        total_pages: Some(u64::MAX),
        free_pages: Some(u64::MAX),
        available_pages: None,
    };
    for m in [
        FromVmm::Inflated {
            ranges: ranges.clone(),
        },
        FromVmm::Deflated {
            id: u32::MAX,
            ranges,
        },
        FromVmm::Stats(stats),
    ] {
        let b = encode(&m, &mut buf).unwrap().to_vec();
        assert!(b.len() <= SLOT_SIZE);
        assert_eq!(decode_from_vmm(&b), Ok(m));
    }
    for m in [
        ToVmm::BalloonTarget { pages: u32::MAX },
        ToVmm::StatsRequest,
        ToVmm::DeflateDone { id: u32::MAX },
        ToVmm::BalloonRefused {
            id: Some(u32::MAX),
            reason: VmRefuse::BalloonState,
        },
    ] {
        let b = encode(&m, &mut buf).unwrap().to_vec();
        assert_eq!(decode_to_vmm(&b), Ok(m));
    }
    // An Inflated whose range runs past the address space, hand-made: its
    // refusal names no report.
    let past = FromVmm::Inflated {
        ranges: core::iter::once(VmRange {
            page: MAX_PFN,
            pages: 2,
        })
        .collect(),
    };
    let mut raw = [0u8; 64];
    let n = postcard::to_slice(&past, &mut raw[1..]).unwrap().len();
    raw[0] = VERSION;
    let e = decode_from_vmm(&raw[..1 + n]).unwrap_err();
    assert_eq!(
        ToVmm::refuse_malformed(&raw[..1 + n], e),
        ToVmm::BalloonRefused {
            id: None,
            reason: VmRefuse::Malformed
        }
    );
    // A damaged Deflated is refused with its id, so the VMM can give the
    // chain back.
    let bad_deflate = FromVmm::Deflated {
        id: 9,
        ranges: core::iter::once(VmRange {
            page: MAX_PFN,
            pages: 2,
        })
        .collect(),
    };
    let n = postcard::to_slice(&bad_deflate, &mut raw[1..])
        .unwrap()
        .len();
    let e = decode_from_vmm(&raw[..1 + n]).unwrap_err();
    assert_eq!(
        ToVmm::refuse_malformed(&raw[..1 + n], e),
        ToVmm::BalloonRefused {
            id: Some(9),
            reason: VmRefuse::Malformed
        }
    );
    for m in [
        ToBalloon::MoreToInflate,
        ToBalloon::Release {
            first_pfn: MAX_PFN,
            end_pfn: MAX_PFN,
        },
    ] {
        let b = encode(&m, &mut buf).unwrap().to_vec();
        assert_eq!(decode_to_balloon(&b), Ok(m));
    }
}

#[test]
fn tunable_keys_round_trip_their_names() {
    for k in TunableKey::ALL {
        assert_eq!(TunableKey::from_name(k.name()), Some(k));
    }
    assert_eq!(TunableKey::from_name("speed"), None);
}

/// The one `key=value` parser of every console: the syntax only, each
/// mistake named; what it prints, it parses back.
#[test]
fn a_tunable_pair_parses_and_every_mistake_is_named() {
    use std::string::ToString;
    assert_eq!(
        parse_tunable_pair(" delay_ms = 250 "),
        Ok((TunableKey::DelayMs, 250))
    );
    assert_eq!(
        parse_tunable_pair("policy=adaptive"),
        Ok((TunableKey::Policy, 1))
    );
    for k in TunableKey::ALL {
        let text = k.pair(1).to_string();
        assert_eq!(parse_tunable_pair(&text), Ok((k, 1)), "{text}");
    }
    let said = |t: &str| parse_tunable_pair(t).unwrap_err().to_string();
    assert_eq!(said("delay_ms"), "'delay_ms' is not key=value");
    assert!(said("speed=1").starts_with("unknown tunable 'speed' (known: order, delay_ms, "));
    assert!(said("speed=1").ends_with(", backoff_max, churn_pages_per_s)"));
    assert_eq!(said("order=nine"), "bad value 'nine' for 'order'");
    assert_eq!(said("policy=fast"), "bad policy 'fast' (linux or adaptive)");
    assert_eq!(said("policy=2"), "bad policy '2' (linux or adaptive)");
}

/// A control answer reads as one line, tunables by name (`policy=linux`).
#[test]
fn control_answers_read_as_one_line() {
    use std::string::ToString;
    let set = |key, value, refused| ToControl::TunableSet {
        key,
        value,
        refused,
    };
    assert_eq!(
        set(TunableKey::DelayMs, 250, None).to_string(),
        "delay_ms=250 set"
    );
    assert_eq!(
        set(TunableKey::Policy, 0, None).to_string(),
        "policy=linux set"
    );
    assert_eq!(
        set(TunableKey::Order, 11, Some(TunableRefusal::OutOfRange)).to_string(),
        "order=11 refused: value out of range"
    );
    assert_eq!(
        ToControl::Refused {
            reason: RefuseReason::Malformed
        }
        .to_string(),
        "request refused: malformed message"
    );
}
