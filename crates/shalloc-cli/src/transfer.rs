//! `shalloc put` and `shalloc get`: blocks to and from files and pipes.

use std::io::{Read, Write};
use std::path::Path;

use shalloc::{Pid, Token};

use crate::progress::Progress;

const CHUNK: usize = 4 << 20;

/// Reads all of `input`, showing progress for large inputs of known size.
fn read_all(mut input: impl Read, expected: Option<u64>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(expected.unwrap_or(0) as usize);
    let mut progress = Progress::new("reading", expected.unwrap_or(0));
    let mut chunk = vec![0u8; CHUNK];
    loop {
        match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&chunk[..n]);
                progress.advance(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    progress.finish();
    Ok(data)
}

/// Writes `bytes` to `out`, showing progress for large blocks.
fn write_all(mut out: impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut progress = Progress::new("writing", bytes.len() as u64);
    for chunk in bytes.chunks(CHUNK) {
        out.write_all(chunk)?;
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    out.flush()
}

/// Copies a file (or stdin) into a new block in `to`'s table and prints the handle.
pub fn put(to: Pid, file: Option<&Path>, frozen: bool, token: bool) -> Result<(), String> {
    let data = match file {
        Some(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            read_all(f, len).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => read_all(std::io::stdin().lock(), None)
            .map_err(|e| format!("cannot read stdin: {e}"))?,
    };
    let alloc = if frozen {
        shalloc::alloc_frozen
    } else {
        shalloc::alloc
    };
    let handle = alloc(&data, to).map_err(|e| e.to_string())?;
    if token {
        println!("{}", Token::new(handle, to));
    } else {
        println!("{handle}");
    }
    Ok(())
}

/// Writes a block's bytes to a file or stdout, then frees the handle when asked to.
pub fn get(token: Token, output: Option<&Path>, free: bool) -> Result<(), String> {
    let Token {
        handle,
        owner: from,
    } = token;
    let view = shalloc::lock_read_only(handle, from).map_err(|e| e.to_string())?;
    let bytes = view.to_vec();
    drop(view);
    match output {
        Some(path) => std::fs::File::create(path)
            .and_then(|f| write_all(f, &bytes))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => write_all(std::io::stdout().lock(), &bytes)
            .map_err(|e| format!("cannot write stdout: {e}"))?,
    }
    if free {
        shalloc::free(handle, from).map_err(|e| e.to_string())?;
    }
    Ok(())
}
