//! `shalloc demo`: a real two-process hand-off, told step by step.
//!
//! The parent starts a child (this same executable), allocates a block into the **child's** table
//! and keeps a view of it; it sends the handle down the child's stdin. The child locks the block
//! with its own pid, checks the parent's message, writes an answer into it, unlocks and frees the
//! handle, and says so on stdout. The parent then reads the answer through its own view, which
//! outlived the free.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use shalloc::{Handle, Pid};

const GREETING: &[u8] = b"hello from the parent";
const ANSWER: &[u8] = b"HELLO BACK FROM CHILD";

pub fn parent() -> Result<(), String> {
    let me = Pid::current();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg("demo-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    let result = talk(me, &mut child);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    result?;
    if !status.success() {
        return Err(format!("the child failed: {status}"));
    }
    println!("[parent {me}] done: the block went to another process and came back changed");
    Ok(())
}

fn talk(me: Pid, child: &mut std::process::Child) -> Result<(), String> {
    let child_pid = Pid::from_raw(child.id());
    let mut block = vec![0u8; 64];
    block[..GREETING.len()].copy_from_slice(GREETING);
    let handle = shalloc::alloc(&block, child_pid).map_err(|e| e.to_string())?;
    println!(
        "[parent {me}] allocated {} bytes into the table of child {child_pid}: handle {handle}",
        block.len()
    );
    let view = shalloc::lock(handle, child_pid).map_err(|e| e.to_string())?;
    println!(
        "[parent {me}] locked it too, to watch: {:?}",
        text(&view.to_vec())
    );
    let stdin = child.stdin.as_mut().ok_or("no pipe to the child")?;
    writeln!(stdin, "{handle}").map_err(|e| format!("cannot write to the child: {e}"))?;
    println!("[parent {me}] sent {handle} to the child over a pipe");
    let stdout = child.stdout.take().ok_or("no pipe from the child")?;
    let mut done = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        done |= line.contains("freed");
    }
    if !done {
        return Err("the child stopped before freeing the block".into());
    }
    let now = view.to_vec();
    println!("[parent {me}] my view now reads: {:?}", text(&now));
    if !now.starts_with(ANSWER) {
        return Err("the child's answer did not arrive".into());
    }
    Ok(())
}

pub fn child() -> Result<(), String> {
    let me = Pid::current();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let handle: Handle = line.trim().parse().map_err(|e| format!("{e}"))?;
    println!("[child  {me}] received handle {handle}");
    let view = shalloc::lock(handle, me).map_err(|e| e.to_string())?;
    let got = view.to_vec();
    println!(
        "[child  {me}] locked it with my own pid: {} bytes, {:?}",
        view.len(),
        text(&got)
    );
    if !got.starts_with(GREETING) {
        return Err("the block does not hold the parent's greeting".into());
    }
    view.write_at(0, ANSWER).map_err(|e| e.to_string())?;
    println!("[child  {me}] wrote {:?} into it", text(ANSWER));
    drop(view);
    println!("[child  {me}] unlocked it");
    shalloc::free(handle, me).map_err(|e| e.to_string())?;
    println!("[child  {me}] freed {handle} in my table");
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\0')
        .to_string()
}
