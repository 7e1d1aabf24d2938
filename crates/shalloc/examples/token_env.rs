//! A token passed through an environment variable: the child finds the block with nothing but
//! `SHALLOC_TOKEN=HANDLE@PID`.
//!
//! `cargo run --example token_env`

use std::process::Command;

use shalloc::{Pid, Token};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(text) = std::env::var("SHALLOC_TOKEN") {
        let token: Token = text.parse()?;
        let view = shalloc::lock_read_only(token.handle, token.owner)?;
        println!(
            "child: {token} holds {:?}",
            String::from_utf8(view.to_vec())?
        );
        return Ok(());
    }
    let me = Pid::current();
    let handle = shalloc::alloc(b"configuration, handed down", me)?;
    let token = Token::new(handle, me);
    println!("parent: starting a child with SHALLOC_TOKEN={token}");
    let status = Command::new(std::env::current_exe()?)
        .env("SHALLOC_TOKEN", token.to_string())
        .status()?;
    shalloc::free(handle, me)?;
    if !status.success() {
        return Err(format!("the child failed: {status}").into());
    }
    Ok(())
}
