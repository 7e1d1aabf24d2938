//! A two-process hand-off in Rust: this process starts a copy of itself, allocates a block into
//! the child's table, and sends it the handle on its stdin; the child locks the block with its own
//! pid, answers in place, and frees it. The parent watches through a view of its own.
//!
//! `cargo run --example handoff`

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use shalloc::{Handle, Pid};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("child") {
        return child();
    }
    let mut child = Command::new(std::env::current_exe()?)
        .arg("child")
        .stdin(Stdio::piped())
        .spawn()?;
    let child_pid = Pid::from_raw(child.id());
    let handle = shalloc::alloc(b"ping", child_pid)?; // into the child's table
    let view = shalloc::lock(handle, child_pid)?; // our own window on it
    writeln!(child.stdin.take().ok_or("no stdin")?, "{handle}")?;
    let status = child.wait()?;
    println!(
        "parent: the child exited ({status}); the block now says {:?}",
        String::from_utf8(view.to_vec())?
    );
    assert_eq!(view.to_vec(), b"pong");
    Ok(())
}

fn child() -> Result<(), Box<dyn std::error::Error>> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let handle: Handle = line.trim().parse()?;
    let me = Pid::current();
    let view = shalloc::lock(handle, me)?;
    println!(
        "child: got {:?} through {handle}",
        String::from_utf8(view.to_vec())?
    );
    view.write_at(0, b"pong")?;
    drop(view);
    shalloc::free(handle, me)?;
    Ok(())
}
