//! The request/response pattern (the shell's app-bar messages): allocate into your *own* table,
//! send {handle, your pid}, let the other side write its answer into the block, then read the
//! answer and free the handle yourself.
//!
//! `cargo run --example request_response`

use std::process::Command;

use shalloc::{Pid, Token};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(token) = std::env::args()
        .nth(2)
        .filter(|_| std::env::args().nth(1).as_deref() == Some("answer"))
    {
        return answer(token.parse()?);
    }
    let me = Pid::current();
    let handle = shalloc::alloc_zeroed(64, me)?; // our own table: we stay the owner
    let token = Token::new(handle, me);
    let status = Command::new(std::env::current_exe()?)
        .args(["answer", &token.to_string()])
        .status()?;
    if !status.success() {
        return Err(format!("the other side failed: {status}").into());
    }
    let view = shalloc::lock(handle, me)?;
    let reply = String::from_utf8(view.to_vec())?;
    println!(
        "requester: the answer is {:?}",
        reply.trim_end_matches('\0')
    );
    drop(view);
    shalloc::free(handle, me)?;
    Ok(())
}

fn answer(token: Token) -> Result<(), Box<dyn std::error::Error>> {
    let view = shalloc::lock(token.handle, token.owner)?; // the requester's table
    view.write_at(0, b"forty-two")?;
    println!("responder: wrote the answer into {token}");
    Ok(())
}
