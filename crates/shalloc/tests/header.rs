//! The checked-in C header must be what cbindgen generates from the current source.
//!
//! `SHALLOC_UPDATE_HEADER=1 cargo test -p shalloc --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn checked_in_header_is_current() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut generated);
    let path = crate_dir.join("../../include/shalloc.h");
    if std::env::var_os("SHALLOC_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write include/shalloc.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/shalloc.h is stale: run `SHALLOC_UPDATE_HEADER=1 cargo test -p shalloc --test header` and commit it"
    );
}
