//! The seed corpus of the `decode` target: generated from valid encoded frames, checked in under
//! `seeds/decode/`, and replayed through the target's checks.
//!
//! Regenerate with `SHALLOC_WRITE_SEEDS=1 cargo test --test seeds` (from `fuzz/`).

use std::path::PathBuf;

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/decode")
}

#[test]
fn seeds_are_current_and_pass_the_checks() {
    let dir = seed_dir();
    let seeds = shalloc_fuzz::decode_seeds();
    if std::env::var_os("SHALLOC_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
    for (name, bytes) in &seeds {
        let on_disk = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("seed {name}: {e} (regenerate with SHALLOC_WRITE_SEEDS=1)"));
        assert_eq!(
            &on_disk, bytes,
            "seed {name} is stale (regenerate with SHALLOC_WRITE_SEEDS=1)"
        );
        shalloc_fuzz::check_decode(bytes);
    }
}

#[test]
fn every_file_in_the_seed_directory_passes_the_checks() {
    // Crashes that were fixed can be kept here as regression inputs, beside the generated seeds.
    for entry in std::fs::read_dir(seed_dir()).expect("read the seed directory") {
        let path = entry.expect("a directory entry").path();
        let bytes = std::fs::read(&path).expect("read a seed");
        shalloc_fuzz::check_decode(&bytes);
    }
}
