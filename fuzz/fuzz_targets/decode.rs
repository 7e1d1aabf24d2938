//! Arbitrary bytes into every decoder of the wire protocol and the listing.
//!
//! See `shalloc_fuzz::check_decode` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shalloc_fuzz::check_decode(data));
