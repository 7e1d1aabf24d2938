//! Looking at and stopping the broker: what `shalloc ls` and `shalloc stop` use. Neither starts a
//! broker when none runs.

use std::os::fd::AsFd;

use shalloc_protocol::wire::{Reply, Request};

use crate::client;
use crate::error::{Error, Result};

pub use shalloc_protocol::listing::{BrokerStats, HandleEntry, Listing, RequestStats, TableEntry};

/// The broker's description of itself and its tables (every handle too with `verbose`), or `None`
/// when no broker runs.
pub fn listing(verbose: bool) -> Result<Option<Listing>> {
    let Some(answer) = client::call_existing(&Request::List { verbose })? else {
        return Ok(None);
    };
    let (Reply::Listing { size }, Some(fd)) = answer else {
        return Err(Error::Protocol {
            reason: format!("unexpected answer to List: {:?}", answer.0),
        });
    };
    let len = usize::try_from(size).map_err(|_| Error::Protocol {
        reason: "listing too large".into(),
    })?;
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match rustix::io::pread(fd.as_fd(), &mut bytes[done..], done as u64) {
            Ok(0) => {
                return Err(Error::Protocol {
                    reason: "listing shorter than announced".into(),
                });
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::os("reading the listing", e)),
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| Error::Protocol {
        reason: "listing is not UTF-8".into(),
    })?;
    Listing::decode(&text)
        .map(Some)
        .map_err(|reason| Error::Protocol { reason })
}

/// Asks the running broker to exit cleanly. `Ok(false)` when none runs.
pub fn stop_broker() -> Result<bool> {
    match client::call_existing(&Request::Stop)? {
        None => Ok(false),
        Some((Reply::Done, _)) => Ok(true),
        Some((other, _)) => Err(Error::Protocol {
            reason: format!("unexpected answer to Stop: {other:?}"),
        }),
    }
}
