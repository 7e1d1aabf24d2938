//! The properties the fuzz targets check, kept in a library so that the seed generator and the
//! corpus replay test (`tests/seeds.rs`) run exactly the code the fuzzer runs.

use shalloc_protocol::listing::{BrokerStats, HandleEntry, Listing, RequestStats, TableEntry};
use shalloc_protocol::wire::{
    Delivery, MAX_FRAME, MAX_REASON, Orphaned, Reply, Request, Returned, UNASKED_ID, VERSION,
};

/// The length of a frame header (kind, flags, request id).
const HEADER: usize = 8;
/// Where a `Failed` reply's reason text starts: the header, then code and length.
const REASON_AT: usize = HEADER + 8;

/// Feeds `data` to [`Request::decode`], [`Reply::decode`], [`Delivery::decode`],
/// [`Returned::decode`], [`Orphaned::decode`] and [`Listing::decode`].
///
/// None may panic, and:
/// - a request that decodes re-encodes to exactly `data` (the format has one encoding per value:
///   flags, padding and booleans are checked, and the id is 0 exactly for notices);
/// - a reply that decodes re-encodes to exactly `data`, except a `Failed` whose reason is not
///   UTF-8: it was decoded lossily (U+FFFD for each bad sequence), so instead its re-encoding must
///   stay within [`MAX_FRAME`], decode again, and be a fixed point of encode∘decode;
/// - no frame is both a request and a reply (their kinds are disjoint);
/// - a delivery (the frame between two clients) that decodes re-encodes to exactly `data`, and is
///   neither a request nor a reply; so do a return and an orphan notice (the frames back), each
///   none of the others;
/// - a listing that decodes survives `decode(encode(listing))`.
pub fn check_decode(data: &[u8]) {
    let request = Request::decode(data);
    if let Ok((id, request)) = &request {
        assert_eq!(
            *id == UNASKED_ID,
            request.is_notice(),
            "{request:?} decoded with id {id}"
        );
        let again = request.encode(*id);
        assert_eq!(
            again.as_bytes(),
            data,
            "{request:?} (id {id}) does not re-encode to its frame"
        );
    }

    let reply = Reply::decode(data);
    if let Ok((id, reply)) = &reply {
        let again = reply.encode(*id);
        assert!(
            again.as_bytes().len() <= MAX_FRAME,
            "{reply:?} encodes oversized"
        );
        if lossless(reply, data) {
            assert_eq!(
                again.as_bytes(),
                data,
                "{reply:?} (id {id}) does not re-encode to its frame"
            );
        } else {
            let decoded = Reply::decode(again.as_bytes());
            let Ok((id2, reply2)) = decoded else {
                panic!("the re-encoding of {reply:?} does not decode: {decoded:?}");
            };
            assert_eq!(id2, *id);
            assert_eq!(reply2.encode(id2).as_bytes(), again.as_bytes());
        }
    }

    assert!(
        request.is_err() || reply.is_err(),
        "a frame decoded both as a request and as a reply"
    );

    let delivery = Delivery::decode(data);
    if let Ok(delivery) = delivery {
        assert_eq!(delivery.encode().as_bytes(), data, "{delivery:?}");
        assert!(request.is_err() && reply.is_err(), "{delivery:?}");
    }

    let returned = Returned::decode(data);
    if let Ok(returned) = returned {
        assert_eq!(returned.encode().as_bytes(), data, "{returned:?}");
        assert!(
            request.is_err() && reply.is_err() && delivery.is_err(),
            "{returned:?}"
        );
    }

    if let Ok(orphaned) = Orphaned::decode(data) {
        assert_eq!(orphaned.encode().as_bytes(), data, "{orphaned:?}");
        assert!(
            request.is_err() && reply.is_err() && delivery.is_err() && returned.is_err(),
            "{orphaned:?}"
        );
    }

    let text = String::from_utf8_lossy(data);
    if let Ok(listing) = Listing::decode(&text) {
        let encoded = listing.encode();
        assert_eq!(
            Listing::decode(&encoded),
            Ok(listing),
            "a decoded listing does not survive encode and decode: {encoded:?}"
        );
    }
}

/// Whether `reply`, decoded from `frame`, was decoded without loss.
fn lossless(reply: &Reply, frame: &[u8]) -> bool {
    match reply {
        Reply::Failed { .. } => frame
            .get(REASON_AT..)
            .is_some_and(|text| std::str::from_utf8(text).is_ok()),
        _ => true,
    }
}

/// Valid requests, one of each kind and its edge values, with the ids to encode them with.
pub fn sample_requests() -> Vec<(u32, Request)> {
    vec![
        (1, Request::Hello { version: VERSION }),
        (
            2,
            Request::Alloc {
                target: 4242,
                size: 4096,
            },
        ),
        (
            3,
            Request::Alloc {
                target: u32::MAX,
                size: u64::MAX,
            },
        ),
        (
            4,
            Request::Lock {
                handle: 0x100,
                owner: 4242,
                write: true,
            },
        ),
        (
            5,
            Request::Lock {
                handle: 0x7fff_fffc,
                owner: 1,
                write: false,
            },
        ),
        (
            6,
            Request::Free {
                handle: 0x104,
                owner: 4242,
            },
        ),
        (
            7,
            Request::Map {
                handle: 0x108,
                from: 4242,
                to: 4343,
            },
        ),
        (u32::MAX, Request::Stop),
        (9, Request::List { verbose: true }),
        (10, Request::List { verbose: false }),
        (20, Request::Attach),
        (21, Request::Lease),
        (UNASKED_ID, Request::Adopted { handle: 0x104 }),
        (22, Request::LeaseInto { target: 4242 }),
    ]
}

/// Valid replies, one of each kind and its edge values, with the ids to encode them with.
pub fn sample_replies() -> Vec<(u32, Reply)> {
    vec![
        (
            1,
            Reply::Hello {
                version: VERSION,
                broker_pid: 77,
                max_block: u64::from(u32::MAX),
            },
        ),
        (2, Reply::Handle { handle: 0x100 }),
        (3, Reply::Block { size: 4096 }),
        (4, Reply::Done),
        (UNASKED_ID, Reply::Done),
        (5, Reply::Listing { size: 321 }),
        (
            6,
            Reply::failed(6, "handle 0x100 is not open in the table of process 4242"),
        ),
        (7, Reply::failed(5, "")),
        (8, Reply::failed(87, "é".repeat(MAX_REASON))),
        (9, Reply::Table { capacity: 65536 }),
        (
            10,
            Reply::Lease {
                start: 0x100,
                count: 16,
            },
        ),
        (
            UNASKED_ID,
            Reply::Adopt {
                handle: 0x104,
                size: 4096,
            },
        ),
        (
            11,
            Reply::Granted {
                start: 0x200,
                count: 64,
                mask: u64::MAX,
            },
        ),
        (
            UNASKED_ID,
            Reply::Leased {
                channel: 1,
                start: 0x200,
                count: 8,
                mask: 0b1111_0111,
            },
        ),
        (UNASKED_ID, Reply::Unleased { channel: 1 }),
    ]
}

/// A listing with every record kind and values that need escaping.
pub fn sample_listing() -> Listing {
    Listing {
        broker: BrokerStats {
            pid: 77,
            version: "0.1.0".into(),
            uptime_ms: 1234,
            log_file: "/run/user/1000/shalloc/broker%\t.log".into(),
            connections: 2,
            handles: 3,
            blocks: 2,
            bytes: 8192,
        },
        requests: vec![
            RequestStats {
                kind: "alloc".into(),
                count: 2,
                errors: 0,
            },
            RequestStats {
                kind: "lock".into(),
                count: 5,
                errors: 1,
            },
        ],
        tables: vec![
            TableEntry {
                pid: 4242,
                command: "we\nird\tname%".into(),
                handles: 2,
                bytes: 8192,
                entries: vec![
                    HandleEntry {
                        handle: 0x100,
                        size: 4096,
                        seals: vec!["shrink".into(), "grow".into(), "seal".into()],
                    },
                    HandleEntry {
                        handle: 0x104,
                        size: 4096,
                        seals: vec![],
                    },
                ],
            },
            TableEntry {
                pid: 4343,
                command: "app".into(),
                handles: 0,
                bytes: 0,
                entries: vec![],
            },
        ],
    }
}

/// The seed corpus of the `decode` target: file name and contents.
pub fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (id, request) in sample_requests() {
        let name = format!("request-{}-{id:08x}", request.name());
        seeds.push((name, request.encode(id).as_bytes().to_vec()));
    }
    for (i, (id, reply)) in sample_replies().into_iter().enumerate() {
        let kind = format!("{reply:?}");
        let kind = kind
            .split([' ', '{'])
            .next()
            .unwrap_or("reply")
            .to_lowercase();
        seeds.push((
            format!("reply-{i:02}-{kind}"),
            reply.encode(id).as_bytes().to_vec(),
        ));
    }
    // A Failed reply whose reason is not UTF-8: the lossy branch.
    let mut lossy = Reply::failed(13, "xx").encode(3).as_bytes().to_vec();
    lossy[REASON_AT] = 0xff;
    seeds.push(("reply-failed-not-utf8".into(), lossy));
    let delivery = Delivery {
        handle: 0x204,
        tag: 9,
        size: 4096,
    };
    seeds.push(("delivery".into(), delivery.encode().as_bytes().to_vec()));
    let returned = Returned {
        handle: 0x204,
        tag: 9,
    };
    seeds.push(("returned".into(), returned.encode().as_bytes().to_vec()));
    let orphaned = Orphaned { handle: 0x208 };
    seeds.push(("orphaned".into(), orphaned.encode().as_bytes().to_vec()));
    seeds.push(("listing".into(), sample_listing().encode().into_bytes()));
    seeds
}
