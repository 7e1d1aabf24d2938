//! `shalloc put` and `shalloc get`: blocks to and from files and pipes.

use std::io::{Read, Write};
use std::path::Path;

use shalloc::{Handle, Pid};

/// Copies a file (or stdin) into a new block in `to`'s table and prints the handle.
pub fn put(to: Pid, file: Option<&Path>) -> Result<(), String> {
    let data = match file {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            data
        }
    };
    let handle = shalloc::alloc(&data, to).map_err(|e| e.to_string())?;
    println!("{handle}");
    Ok(())
}

/// Writes a block's bytes to a file or stdout, then frees the handle when asked to.
pub fn get(handle: Handle, from: Pid, output: Option<&Path>, free: bool) -> Result<(), String> {
    let view = shalloc::lock_read_only(handle, from).map_err(|e| e.to_string())?;
    let bytes = view.to_vec();
    drop(view);
    match output {
        Some(path) => std::fs::write(path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write stdout: {e}"))?;
        }
    }
    if free {
        shalloc::free(handle, from).map_err(|e| e.to_string())?;
    }
    Ok(())
}
