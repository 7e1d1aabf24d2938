//! A producer that hands frozen blocks to a consumer it spawned. Frozen blocks can never change,
//! so the consumer reads them in place as `&[u8]` — safe zero-copy — with no copy at all.
//!
//! `cargo run --example frozen_producer`

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};

use shalloc::{Pid, Token};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("consumer") {
        return consumer();
    }
    let mut consumer = Command::new(std::env::current_exe()?)
        .arg("consumer")
        .stdin(Stdio::piped())
        .spawn()?;
    let to = Pid::from_raw(consumer.id());
    let mut pipe = consumer.stdin.take().ok_or("no stdin")?;
    for i in 1..=3u8 {
        // Serialize straight into the block, then freeze it: no intermediate buffer.
        let handle = shalloc::alloc_frozen_with(1024, to, |buf| buf.fill(i))?;
        writeln!(pipe, "{}", Token::new(handle, to))?; // into the consumer's table
        println!(
            "producer: sent frozen block {i} as {}",
            Token::new(handle, to)
        );
    }
    drop(pipe);
    let status = consumer.wait()?;
    if !status.success() {
        return Err(format!("the consumer failed: {status}").into());
    }
    Ok(())
}

fn consumer() -> Result<(), Box<dyn std::error::Error>> {
    for line in std::io::stdin().lock().lines() {
        let token: Token = line?.trim().parse()?;
        let view = shalloc::lock_read_only(token.handle, token.owner)?;
        let bytes = view.frozen_bytes().ok_or("the block is not frozen")?; // &[u8], no copy
        let sum: u64 = bytes.iter().map(|b| u64::from(*b)).sum();
        println!("consumer: {} frozen bytes, sum {sum}", bytes.len());
        drop(view);
        shalloc::free(token.handle, token.owner)?;
    }
    Ok(())
}
