//! Property tests of the frame decoders: every request and reply, with arbitrary field values and
//! ids, survives encode then decode; arbitrary bytes (fully random, and mutations of valid frames)
//! never make a decoder panic, and whatever decodes re-encodes to the same bytes; a listing with
//! arbitrary names survives encode then decode.
//!
//! The coverage-guided fuzz target in `fuzz/` checks the same properties for much longer; this
//! runs in well under a second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::collection::vec;
use proptest::prelude::*;

use shalloc_protocol::listing::{BrokerStats, HandleEntry, Listing, RequestStats, TableEntry};
use shalloc_protocol::wire::{MAX_FRAME, MAX_REASON, Reply, Request, UNASKED_ID};

/// Where a `Failed` reply's reason text starts: the 8-byte header, then code and length.
const REASON_AT: usize = 16;

/// The kinds of every message, so that generated headers hit the decoders' bodies.
const KINDS: [u16; 13] = [
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x8001, 0x8002, 0x8003, 0x8004, 0x8005,
    0x80ff,
];

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<u32>().prop_map(|version| Request::Hello { version }),
        (any::<u32>(), any::<u64>()).prop_map(|(target, size)| Request::Alloc { target, size }),
        (any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(handle, owner, write)| {
            Request::Lock {
                handle,
                owner,
                write,
            }
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(handle, owner)| Request::Free { handle, owner }),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(handle, from, to)| Request::Map {
            handle,
            from,
            to
        }),
        Just(Request::Stop),
        any::<bool>().prop_map(|verbose| Request::List { verbose }),
    ]
}

/// Text of any chars, from empty to longer than a frame can carry (multi-byte chars included).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max_chars).prop_map(String::from_iter)
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(version, broker_pid, max_block)| {
            Reply::Hello {
                version,
                broker_pid,
                max_block,
            }
        }),
        any::<u32>().prop_map(|handle| Reply::Handle { handle }),
        any::<u64>().prop_map(|size| Reply::Block { size }),
        Just(Reply::Done),
        any::<u64>().prop_map(|size| Reply::Listing { size }),
        // Built by hand, not by `Reply::failed`: the encoder must cut an over-long reason itself.
        (any::<u32>(), text(MAX_FRAME)).prop_map(|(code, reason)| Reply::Failed { code, reason }),
    ]
}

/// Frames that are mostly well-formed: a real kind, zero flags, and a body of about the right
/// length, so that every decoder branch sees its edge cases (random bytes alone rarely get past
/// the header).
fn near_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(KINDS.as_slice()),
        any::<u32>(),
        prop_oneof![Just(0u16), any::<u16>()],
        vec(any::<u8>(), 0..=MAX_FRAME - 8),
        prop_oneof![0usize..=24, 0usize..=MAX_FRAME],
        any::<bool>(),
    )
        .prop_map(|(kind, id, flags, body, body_len, text_len)| {
            let mut frame = Vec::with_capacity(MAX_FRAME);
            frame.extend_from_slice(&kind.to_le_bytes());
            frame.extend_from_slice(&flags.to_le_bytes());
            frame.extend_from_slice(&id.to_le_bytes());
            frame.extend_from_slice(&body[..body_len.min(body.len())]);
            // For a Failed reply, make the length field agree with the text, half of the time.
            if text_len && kind == 0x80ff && frame.len() >= REASON_AT {
                let len = (frame.len() - REASON_AT) as u32;
                frame[12..16].copy_from_slice(&len.to_le_bytes());
            }
            frame
        })
}

/// Every decoder on `bytes`: no panic, and what decodes re-encodes to `bytes` (for a `Failed`
/// reason that is not UTF-8, which decodes lossily, re-encoding must reach a fixed point instead).
fn check_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let request = Request::decode(bytes);
    if let Ok((id, request)) = &request {
        prop_assert_ne!(*id, UNASKED_ID);
        let again = request.encode(*id);
        prop_assert_eq!(again.as_bytes(), bytes);
    }
    let reply = Reply::decode(bytes);
    if let Ok((id, reply)) = &reply {
        let again = reply.encode(*id);
        let lossless = !matches!(reply, Reply::Failed { .. })
            || std::str::from_utf8(&bytes[REASON_AT..]).is_ok();
        if lossless {
            prop_assert_eq!(again.as_bytes(), bytes);
        } else {
            let (id2, reply2) = Reply::decode(again.as_bytes()).expect("a re-encoding decodes");
            prop_assert_eq!(id2, *id);
            let third = reply2.encode(id2);
            prop_assert_eq!(third.as_bytes(), again.as_bytes());
        }
    }
    prop_assert!(
        request.is_err() || reply.is_err(),
        "both a request and a reply"
    );
    let _ = Listing::decode(&String::from_utf8_lossy(bytes));
    Ok(())
}

const SEALS: [&str; 5] = ["shrink", "grow", "seal", "write", "future_write"];

fn listing() -> impl Strategy<Value = Listing> {
    let broker = (
        any::<u32>(),
        text(20),
        any::<u64>(),
        text(40),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(pid, version, uptime_ms, log_file, (connections, handles, blocks, bytes))| {
                BrokerStats {
                    pid,
                    version,
                    uptime_ms,
                    log_file,
                    connections,
                    handles,
                    blocks,
                    bytes,
                }
            },
        );
    let requests = vec(
        (text(10), any::<u64>(), any::<u64>()).prop_map(|(kind, count, errors)| RequestStats {
            kind,
            count,
            errors,
        }),
        0..4,
    );
    let entry = (
        any::<u32>(),
        any::<u64>(),
        prop::sample::subsequence(SEALS.as_slice(), 0..=SEALS.len()),
    )
        .prop_map(|(handle, size, seals)| HandleEntry {
            handle,
            size,
            seals: seals.into_iter().map(String::from).collect(),
        });
    let table = (
        any::<u32>(),
        text(20),
        any::<u64>(),
        any::<u64>(),
        vec(entry, 0..4),
    )
        .prop_map(|(pid, command, handles, bytes, entries)| TableEntry {
            pid,
            command,
            handles,
            bytes,
            entries,
        });
    (broker, requests, vec(table, 0..4)).prop_map(|(broker, requests, tables)| Listing {
        broker,
        requests,
        tables,
    })
}

const RECORDS: [&str; 5] = ["broker", "requests", "table", "handle", "other"];
const KEYS: [&str; 15] = [
    "pid",
    "version",
    "uptime_ms",
    "log_file",
    "connections",
    "handles",
    "blocks",
    "bytes",
    "kind",
    "count",
    "errors",
    "command",
    "handle",
    "size",
    "seals",
];

/// Text that looks like a listing: known records and keys, values that are numbers, escapes or
/// anything, so that the parser's branches (missing fields, bad numbers, a handle before any
/// table) are reached.
fn listing_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("%25%09%0A%".to_string()),
        text(8),
    ];
    let field = (prop::sample::select(KEYS.as_slice()), value)
        .prop_map(|(key, value)| format!("{key}={value}"));
    let line = (prop::sample::select(RECORDS.as_slice()), vec(field, 0..10)).prop_map(
        |(record, fields)| {
            std::iter::once(record.to_string())
                .chain(fields)
                .collect::<Vec<_>>()
                .join("\t")
        },
    );
    vec(line, 0..6).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn every_request_round_trips(request in request(), id in 1..=u32::MAX) {
        let frame = request.encode(id);
        prop_assert!(frame.as_bytes().len() <= MAX_FRAME);
        prop_assert_eq!(Request::decode(frame.as_bytes()), Ok((id, request)));
    }

    #[test]
    fn no_request_uses_the_unasked_id(request in request()) {
        prop_assert!(Request::decode(request.encode(UNASKED_ID).as_bytes()).is_err());
    }

    #[test]
    fn every_reply_round_trips(reply in reply(), id in any::<u32>()) {
        let frame = reply.encode(id);
        prop_assert!(frame.as_bytes().len() <= MAX_FRAME);
        // A reason longer than MAX_REASON is cut at a char boundary, exactly as `failed` cuts it.
        let expected = match reply {
            Reply::Failed { code, reason } => Reply::failed(code, reason),
            other => other,
        };
        if let Reply::Failed { reason, .. } = &expected {
            prop_assert!(reason.len() <= MAX_REASON);
        }
        prop_assert_eq!(Reply::decode(frame.as_bytes()), Ok((id, expected)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..=MAX_FRAME + 1)) {
        check_bytes(&bytes)?;
    }

    #[test]
    fn near_frames_never_panic(bytes in near_frame()) {
        check_bytes(&bytes)?;
    }

    #[test]
    fn mutated_frames_never_panic(
        message in prop_oneof![
            (request(), 1..=u32::MAX).prop_map(|(r, id)| r.encode(id).as_bytes().to_vec()),
            (reply(), any::<u32>()).prop_map(|(r, id)| r.encode(id).as_bytes().to_vec()),
        ],
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        extra in vec(any::<u8>(), 0..4),
    ) {
        let mut bytes = message;
        let i = at.index(bytes.len());
        bytes[i] = byte;
        check_bytes(&bytes)?;
        bytes.truncate(cut.index(bytes.len() + 1));
        check_bytes(&bytes)?;
        bytes.extend_from_slice(&extra);
        check_bytes(&bytes)?;
    }

    #[test]
    fn listings_round_trip(listing in listing()) {
        prop_assert_eq!(Listing::decode(&listing.encode()), Ok(listing));
    }

    #[test]
    fn arbitrary_listing_text_never_panics(text in prop_oneof![text(300), listing_text()]) {
        if let Ok(listing) = Listing::decode(&text) {
            let _ = listing.encode();
        }
    }
}
