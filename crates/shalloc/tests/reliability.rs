//! Reliability against the real broker and real processes:
//!
//! 1. the broker SIGKILLed while four forked clients cycle alloc/lock/unlock/free: no call takes
//!    2 s, failures are clean errors, a new broker serves every client within 1 s, views survive,
//!    and no handle value of the dead broker reaches a block of the new one; and the same with an
//!    outage (no new broker can start for a while), where calls fail within their timeout;
//! 2. a client SIGKILLed while it holds handles and views: its table is gone within 100 ms (also
//!    measured over 20 deaths), the broker's descriptors return to their baseline, and a block the
//!    parent has mapped lives on in that view alone;
//! 3. a pid handed to a new process (in a PID namespace of the test's own, steered with
//!    `ns_last_pid`) comes with an empty table;
//! 5. 10^5 cycles leave the client no descriptor, mapping or view more than it started with.
//!
//! (4, the soak, is in `soak.rs`.) Every wait has a deadline, and every process a test starts is
//! killed by its pid when the test fails (`procs::Child`; the namespace's processes die with its
//! init). The numbers the tests measure go to stderr:
//! `cargo nextest run -p shalloc --test reliability --no-capture` shows them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/reliability_support.rs"]
mod support;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::TestEnv;
use procs::{Child, End};
use shalloc::{
    Error, Handle, Pid, alloc, broker_info, broker_pid, free, live_views, lock, map_handle,
};
use support::SharedWords;

// ---------------------------------------------------------------------------------------------
// 1. The broker dies under load.
// ---------------------------------------------------------------------------------------------

/// Client processes cycling while the broker is killed.
const CLIENTS: usize = 4;
/// No call may take longer than this, whatever happens to the broker.
const CALL_LIMIT: Duration = Duration::from_secs(2);
/// From the kill to the first call a new broker served, in every client.
const RESTORE_LIMIT: Duration = Duration::from_secs(1);
/// The per-call timeout the clients run with (`SHALLOC_TIMEOUT_MS`): below [`CALL_LIMIT`], so even
/// a call that met a stalled broker would give up in time; the default (5 s) is above it.
const CLIENT_TIMEOUT_MS: &str = "1500";
/// Cycles each client completes on the new broker before it stops and checks.
const CYCLES_AFTER_RESTORE: u64 = 300;

// Words shared between the parent and the cycling clients (CLOCK_MONOTONIC ns, 0 until set).
/// Just before the SIGKILL.
const KILL_NS: usize = 0;
/// When a new broker may start: the kill, or the end of an outage.
const BACK_NS: usize = 1;
/// Per client, from this word on: its calls that failed with `BrokerUnavailable` so far.
const FAILS: usize = 2;

/// What one client measured, as sent to the parent (in this order).
#[derive(Debug, Default, Clone, Copy)]
struct ClientReport {
    /// The longest call, in ns, and which call it was (0 alloc, 1 lock, 2 free).
    max_call_ns: u64,
    max_call_kind: u64,
    /// From the moment a new broker could start (`BACK_NS`) to the end of the first call a new
    /// broker served, in ns.
    restore_ns: u64,
    /// The longest failed call, in ns.
    max_failed_ns: u64,
    /// Cycles in all, and how many of them ran after the kill.
    cycles: u64,
    cycles_after_kill: u64,
    /// Failed calls after the kill, by kind.
    unavailable: u64,
    invalid_handle: u64,
    other_errors: u64,
    /// Failed calls before the kill (there should be none) and calls that panicked.
    errors_before_kill: u64,
    panics: u64,
    /// The broker that served this client at the end.
    new_broker: u64,
    /// Old-broker handle values checked against the new broker (all failed cleanly).
    stale_checked: u64,
}

impl ClientReport {
    const WORDS: usize = 13;

    fn to_words(self) -> [u64; Self::WORDS] {
        [
            self.max_call_ns,
            self.max_call_kind,
            self.restore_ns,
            self.max_failed_ns,
            self.cycles,
            self.cycles_after_kill,
            self.unavailable,
            self.invalid_handle,
            self.other_errors,
            self.errors_before_kill,
            self.panics,
            self.new_broker,
            self.stale_checked,
        ]
    }

    fn from_words(w: &[u64]) -> ClientReport {
        ClientReport {
            max_call_ns: w[0],
            max_call_kind: w[1],
            restore_ns: w[2],
            max_failed_ns: w[3],
            cycles: w[4],
            cycles_after_kill: w[5],
            unavailable: w[6],
            invalid_handle: w[7],
            other_errors: w[8],
            errors_before_kill: w[9],
            panics: w[10],
            new_broker: w[11],
            stale_checked: w[12],
        }
    }
}

/// One client's bookkeeping while it cycles.
struct Cycler<'a> {
    index: usize,
    me: Pid,
    ctl: &'a SharedWords,
    old_broker: u32,
    report: ClientReport,
    /// Handle values each broker gave this client.
    old_handles: HashSet<Handle>,
    new_handles: HashSet<Handle>,
    /// Successful calls served by a new broker since the kill.
    restored_calls: u64,
}

const ALLOC: u64 = 0;
const LOCK: u64 = 1;
const FREE: u64 = 2;

impl Cycler<'_> {
    /// Runs one call, timing it, catching a panic, and counting its outcome. Returns its value, or
    /// `None` when it failed or panicked.
    fn call<T>(&mut self, kind: u64, f: impl FnOnce() -> shalloc::Result<T>) -> Option<T> {
        let killed_before = self.ctl.get(KILL_NS) != 0;
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(f));
        let took = start.elapsed();
        let end_ns = support::monotonic_ns();
        let killed_after = self.ctl.get(KILL_NS) != 0;
        let took_ns = took.as_nanos() as u64;
        if took_ns > self.report.max_call_ns {
            self.report.max_call_ns = took_ns;
            self.report.max_call_kind = kind;
        }
        match result {
            Err(_) => {
                self.report.panics += 1;
                None
            }
            Ok(Ok(value)) => {
                // Which broker served it: the connection the call just used is still there.
                let served_by = broker_info().map(|i| i.pid).unwrap_or(0);
                if killed_before && served_by != self.old_broker {
                    self.restored_calls += 1;
                    if self.report.restore_ns == 0 {
                        self.report.restore_ns = end_ns.saturating_sub(self.ctl.get(BACK_NS));
                    }
                }
                Some(value)
            }
            Ok(Err(e)) => {
                self.report.max_failed_ns = self.report.max_failed_ns.max(took_ns);
                if !killed_after {
                    self.report.errors_before_kill += 1;
                    eprintln!("client {}: error before the kill: {e:?}", self.index);
                } else {
                    match e {
                        Error::BrokerUnavailable { ref reason } => {
                            eprintln!(
                                "client {}: failed after {took:.2?}: broker unavailable: {reason}",
                                self.index
                            );
                            self.report.unavailable += 1;
                            self.ctl
                                .word(FAILS + self.index)
                                .fetch_add(1, Ordering::SeqCst);
                        }
                        Error::InvalidHandle { .. } => self.report.invalid_handle += 1,
                        ref other => {
                            self.report.other_errors += 1;
                            eprintln!("client {}: unexpected error {other:?}", self.index);
                        }
                    }
                }
                None
            }
        }
    }

    /// alloc → lock → check the bytes → unlock → free, each call counted; failures go on to the
    /// next step where that makes sense (a handle of the dead broker is still freed, and fails).
    fn cycle(&mut self, n: u64) {
        let size = 64 + (n as usize * 37 + self.index * 101) % 4000;
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u64 ^ n ^ (self.index as u64) << 5) as u8)
            .collect();
        let me = self.me;
        let killed = self.ctl.get(KILL_NS) != 0;
        self.report.cycles += 1;
        if killed {
            self.report.cycles_after_kill += 1;
        }
        let Some(h) = self.call(ALLOC, || alloc(&data, me)) else {
            return;
        };
        match broker_info().map(|i| i.pid) {
            Ok(pid) if pid == self.old_broker => self.old_handles.insert(h),
            _ => self.new_handles.insert(h),
        };
        if let Some(view) = self.call(LOCK, || lock(h, me)) {
            // A lock that works must show this handle's bytes, never another block's.
            assert_eq!(
                view.to_vec(),
                data,
                "client {}: handle {h} locked a block with other bytes",
                self.index
            );
            drop(view);
        }
        self.call(FREE, || free(h, me));
    }
}

/// The body of one cycling client: prepares a block it keeps mapped and a handle that the kill
/// makes stale, cycles until well after a new broker serves it, then checks what survived.
fn cycling_client(index: usize, ctl: &SharedWords, mut end: End) -> i32 {
    let me = Pid::current();
    let kept_bytes = format!("client {index}: mapped before the broker died").into_bytes();
    let kept = alloc(&kept_bytes, me).unwrap();
    let kept_view = lock(kept, me).unwrap();
    let old_broker = broker_pid().unwrap().as_raw();
    let mut c = Cycler {
        index,
        me,
        ctl,
        old_broker,
        report: ClientReport::default(),
        old_handles: HashSet::from([kept]),
        new_handles: HashSet::new(),
        restored_calls: 0,
    };
    for n in 0..20 {
        c.cycle(n);
    }
    assert_eq!(c.report.errors_before_kill, 0, "warm-up failed");
    end.send(old_broker);

    let started = Instant::now();
    let mut n = 20;
    while c.restored_calls < CYCLES_AFTER_RESTORE * 3 {
        c.cycle(n);
        n += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "client {index}: no new broker served {} calls within 30 s ({:?})",
            CYCLES_AFTER_RESTORE * 3,
            c.report
        );
    }

    // The view mapped before the kill keeps its bytes and still works.
    assert_eq!(kept_view.to_vec(), kept_bytes, "client {index}: kept view");
    kept_view.write_at(0, b"C").unwrap();
    assert_eq!(kept_view.to_vec()[0], b'C');

    // Hold blocks of the new broker in our table, then try every handle value the old broker gave
    // us (up to 256 of them, the kept one first): none may reach anything.
    let fresh: Vec<Handle> = (0..8u8).map(|i| alloc(&[i; 32], me).unwrap()).collect();
    c.new_handles.extend(fresh.iter().copied());
    let overlap: Vec<&Handle> = c.old_handles.intersection(&c.new_handles).collect();
    assert!(
        overlap.is_empty(),
        "client {index}: the new broker handed out values of the old one: {overlap:?}"
    );
    let mut stale: Vec<Handle> = c
        .old_handles
        .iter()
        .copied()
        .filter(|h| *h != kept)
        .collect();
    stale.sort();
    stale.truncate(255);
    stale.insert(0, kept);
    for h in &stale {
        match lock(*h, me) {
            Err(Error::InvalidHandle { .. }) => {}
            Ok(v) => panic!(
                "client {index}: stale handle {h} reached a block of the new broker: {:?}",
                &v.to_vec()[..v.len().min(16)]
            ),
            Err(e) => panic!("client {index}: lock of stale handle {h}: {e:?}"),
        }
    }
    assert!(matches!(free(kept, me), Err(Error::InvalidHandle { .. })));
    assert!(matches!(
        map_handle(kept, me, me),
        Err(Error::InvalidHandle { .. })
    ));
    for (i, h) in fresh.iter().enumerate() {
        assert_eq!(lock(*h, me).unwrap().to_vec(), [i as u8; 32]);
        free(*h, me).unwrap();
    }
    c.report.stale_checked = stale.len() as u64;
    c.report.new_broker = u64::from(broker_pid().unwrap().as_raw());
    drop(kept_view);
    support::send_u64s(end.w.as_mut().unwrap(), &c.report.to_words());
    // Every value each broker gave us, for the parent to compare across clients.
    for set in [&c.old_handles, &c.new_handles] {
        let mut words = vec![set.len() as u64];
        words.extend(set.iter().map(|h| u64::from(h.as_raw())));
        support::send_u64s(end.w.as_mut().unwrap(), &words);
    }
    0
}

/// Kills the broker while [`CLIENTS`] forked clients cycle, checks everything item 1 promises and
/// prints what was measured. With `outage`, the test holds the broker start lock from before the
/// kill until every client has seen calls fail (as if the process starting the new broker
/// stalled), so there is a time in which no broker can be reached at all.
fn kill_the_broker_under_load(outage: bool) {
    let env = TestEnv::new();
    support::set_env(shalloc::TIMEOUT_ENV, CLIENT_TIMEOUT_MS);
    let me = Pid::current();
    let ctl = SharedWords::new(FAILS + CLIENTS);

    // The parent too keeps a view and a handle from before the kill.
    let parent_bytes = b"the parent's block, mapped before the kill";
    let parent_handle = alloc(parent_bytes, me).unwrap();
    let parent_view = lock(parent_handle, me).unwrap();
    let old_broker = broker_pid().unwrap().as_raw();

    let mut clients: Vec<(Child, End)> = (0..CLIENTS)
        .map(|i| procs::fork_with_channel(|end| cycling_client(i, &ctl, end)))
        .collect();
    for (_, end) in &mut clients {
        assert_eq!(end.recv(), old_broker, "a client saw another broker");
    }

    let start_lock = outage.then(|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(env.rendezvous().start_lock())
            .unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
        file
    });
    let kill_ns = support::monotonic_ns();
    ctl.set(KILL_NS, kill_ns);
    if !outage {
        ctl.set(BACK_NS, kill_ns);
    }
    let killed = Instant::now();
    support::kill_and_wait_gone(old_broker, Duration::from_secs(5));
    let gone = killed.elapsed();
    let mut outage_len = Duration::ZERO;
    if let Some(file) = start_lock {
        // Until every client has had two calls fail.
        common::wait_until(Duration::from_secs(20), || {
            (0..CLIENTS).all(|i| ctl.get(FAILS + i) >= 2)
        });
        ctl.set(BACK_NS, support::monotonic_ns());
        outage_len = killed.elapsed();
        drop(file);
    }

    let mut reports = Vec::new();
    let (mut old_values, mut new_values) = (HashSet::new(), HashSet::new());
    for (child, end) in &mut clients {
        let words = support::recv_u64s(&mut end.r, ClientReport::WORDS);
        reports.push(ClientReport::from_words(&words));
        for set in [&mut old_values, &mut new_values] {
            let n = support::recv_u64s(&mut end.r, 1)[0] as usize;
            set.extend(support::recv_u64s(&mut end.r, n));
        }
        child.expect_success();
    }

    let new_broker = env.running_broker().expect("no broker runs after the test");
    assert_ne!(new_broker, old_broker);
    assert_eq!(procs::brokers_serving(&env.dir), vec![new_broker]);
    eprintln!(
        "broker {old_broker} SIGKILLed; gone after {:.2} ms; {}replaced by {new_broker}",
        gone.as_secs_f64() * 1e3,
        if outage {
            format!("no broker could start for {outage_len:.2?}; ")
        } else {
            String::new()
        }
    );
    // No value of the old broker, in any client's table, was handed out again by the new one: a
    // (handle, pid) pair sent before the death can never name a new block.
    let reused: Vec<&u64> = old_values.intersection(&new_values).collect();
    eprintln!(
        "handle values: {} from the old broker, {} from the new one, {} in both",
        old_values.len(),
        new_values.len(),
        reused.len()
    );
    assert!(
        reused.is_empty(),
        "values handed out by both brokers: {reused:?}"
    );
    let kinds = ["alloc", "lock", "free"];
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "client {i}: max call {:.2} ms ({}), max failed call {:.2} ms, service back {:.2} ms \
             after {}, {} cycles ({} after the kill), errors after the kill: {} unavailable, {} \
             invalid handle, {} other; {} stale handles checked",
            r.max_call_ns as f64 / 1e6,
            kinds[r.max_call_kind as usize],
            r.max_failed_ns as f64 / 1e6,
            r.restore_ns as f64 / 1e6,
            if outage { "the outage" } else { "the kill" },
            r.cycles,
            r.cycles_after_kill,
            r.unavailable,
            r.invalid_handle,
            r.other_errors,
            r.stale_checked
        );
    }
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.panics, 0, "client {i}: calls panicked: {r:?}");
        assert_eq!(r.errors_before_kill, 0, "client {i}: {r:?}");
        assert_eq!(
            r.other_errors, 0,
            "client {i}: unexpected error kinds: {r:?}"
        );
        assert!(
            Duration::from_nanos(r.max_call_ns) < CALL_LIMIT,
            "client {i}: a call took {:?}: {r:?}",
            Duration::from_nanos(r.max_call_ns)
        );
        assert!(r.restore_ns > 0, "client {i}: never served by a new broker");
        assert!(
            Duration::from_nanos(r.restore_ns) < RESTORE_LIMIT,
            "client {i}: service came back {:?} after it could: {r:?}",
            Duration::from_nanos(r.restore_ns)
        );
        assert_eq!(r.new_broker, u64::from(new_broker), "client {i}");
        if outage {
            assert!(r.unavailable >= 2, "client {i}: {r:?}");
        }
    }

    // The parent's view survived; its handle is stale and fails cleanly.
    assert_eq!(parent_view.to_vec(), parent_bytes);
    assert!(matches!(
        lock(parent_handle, me),
        Err(Error::InvalidHandle { .. })
    ));
    assert!(matches!(
        free(parent_handle, me),
        Err(Error::InvalidHandle { .. })
    ));
    assert_eq!(broker_pid().unwrap().as_raw(), new_broker);
}

#[test]
fn broker_killed_under_four_cycling_clients_is_replaced_without_hangs_or_stale_handles() {
    kill_the_broker_under_load(false);
}

#[test]
fn while_no_broker_can_start_calls_fail_within_their_timeout_and_service_returns() {
    kill_the_broker_under_load(true);
}

// ---------------------------------------------------------------------------------------------
// 2. A client dies holding handles and views.
// ---------------------------------------------------------------------------------------------

/// How soon after its death (its `waitpid` returned) a process's table must be gone.
const TABLE_DROP_LIMIT: Duration = Duration::from_millis(100);

/// Sizes of the blocks a doomed child holds in its table.
const DOOMED_SIZES: [usize; 5] = [64, 4096, 65536, 1 << 20, 100];

/// A child that fills its own table, locks every other block, sends the parent the handle of one
/// more block (which the parent will lock), then waits to be killed.
fn doomed_child(mut end: End) -> i32 {
    let me = Pid::current();
    let mut views = Vec::new();
    for (i, size) in DOOMED_SIZES.iter().enumerate() {
        let h = alloc(&vec![i as u8; *size], me).unwrap();
        if i % 2 == 0 {
            views.push(lock(h, me).unwrap());
        }
    }
    let shared = alloc(b"owned by the child, mapped by the parent", me).unwrap();
    views.push(lock(shared, me).unwrap());
    end.send(shared.as_raw());
    // Wait to be killed; if the parent never does, the read fails after procs::LIMIT.
    end.recv();
    drop(views);
    1
}

/// Polls the listing until `pid`'s table is gone; returns how long that took, or fails with the
/// time it took after all (up to 5 s).
fn table_drop_latency(pid: Pid, since: Instant) -> Duration {
    let gone = || procs::table_handles(pid).is_none();
    match support::time_until(TABLE_DROP_LIMIT, gone) {
        Some(_) => since.elapsed(),
        None => match support::time_until(Duration::from_secs(5), gone) {
            Some(_) => panic!(
                "the table of dead process {pid} was dropped only {:?} after its death",
                since.elapsed()
            ),
            None => panic!("the table of dead process {pid} is still listed 5 s after its death"),
        },
    }
}

#[test]
fn a_killed_clients_table_is_dropped_and_its_blocks_released_but_a_view_elsewhere_survives() {
    let env = TestEnv::new();
    let broker = broker_pid().unwrap().as_raw();
    let broker_s = broker.to_string();
    let baseline = support::fd_count(&broker_s);
    let baseline_listing = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(baseline_listing.broker.blocks, 0);

    let (mut child, mut end) = procs::fork_with_channel(doomed_child);
    let shared = Handle::from_raw(end.recv()).unwrap();
    // The parent maps the child's block through the child's table.
    let parent_view = lock(shared, child.pid()).unwrap();
    let shared_ino = support::inode_mapped_at(parent_view.as_ptr() as usize).unwrap();
    let handles = DOOMED_SIZES.len() as u64 + 1;
    assert_eq!(procs::table_handles(child.pid()), Some(handles));
    let with_child = support::fd_count(&broker_s);
    assert!(
        with_child > baseline,
        "the child's connection and table cost the broker no descriptor ({with_child}, {baseline})"
    );
    // A process holds the blocks of its own table itself: the broker holds none of them (it
    // opened the shared one again for the parent's lock, and closed it once sent).
    assert!(
        !support::fd_inodes(&broker_s).contains(&shared_ino),
        "the broker holds an fd of a block in the child's own table"
    );

    let reaped = support::kill_and_reap(&mut child);
    let dropped = table_drop_latency(child.pid(), reaped);
    let released = support::time_until(Duration::from_secs(2), || {
        support::fd_count(&broker_s) == baseline
    })
    .map(|_| reaped.elapsed());
    eprintln!(
        "broker fds: {baseline} before the child, {with_child} with its connection and table \
         ({handles} blocks, held by the child), \
         table dropped {:.2} ms after waitpid, fds back to {baseline} after {:?}",
        dropped.as_secs_f64() * 1e3,
        released
    );
    assert!(
        released.is_some(),
        "the broker still holds {} fds 2 s after the death (baseline {baseline})",
        support::fd_count(&broker_s)
    );
    assert!(!support::fd_inodes(&broker_s).contains(&shared_ino));
    let after = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(
        (
            after.broker.handles,
            after.broker.blocks,
            after.broker.bytes
        ),
        (0, 0, 0)
    );

    // The block lives on in the parent's view: readable and writable, though its handle is gone.
    assert_eq!(
        parent_view.to_vec(),
        b"owned by the child, mapped by the parent"
    );
    parent_view.write_at(0, b"OWNED").unwrap();
    assert_eq!(&parent_view.to_vec()[..5], b"OWNED");
    assert!(matches!(
        lock(shared, child.pid()),
        Err(Error::NoSuchProcess { .. } | Error::InvalidHandle { .. })
    ));
    // With the view dropped, nothing refers to the block any more: the child is dead, the broker
    // closed its descriptor, and no mapping of it remains here.
    assert!(support::maps_inode(shared_ino));
    drop(parent_view);
    assert!(!support::maps_inode(shared_ino));
    assert_eq!(live_views(), 0);
    assert_eq!(support::fd_count(&broker_s), baseline);
    drop(env);
}

#[test]
fn table_drop_latency_over_20_client_deaths() {
    let env = TestEnv::new();
    let broker = broker_pid().unwrap().as_raw().to_string();
    let baseline = support::fd_count(&broker);
    let mut latencies = Vec::new();
    let mut fd_settle = Vec::new();
    for _ in 0..20 {
        let (mut child, mut end) = procs::fork_with_channel(doomed_child);
        end.recv();
        assert_eq!(
            procs::table_handles(child.pid()),
            Some(DOOMED_SIZES.len() as u64 + 1)
        );
        let reaped = support::kill_and_reap(&mut child);
        let gone = || procs::table_handles(child.pid()).is_none();
        let took = match support::time_until(Duration::from_secs(5), gone) {
            Some(_) => reaped.elapsed(),
            None => panic!("a dead process's table is still listed after 5 s"),
        };
        latencies.push(took);
        let settled = support::time_until(Duration::from_secs(2), || {
            support::fd_count(&broker) == baseline
        });
        assert!(
            settled.is_some(),
            "broker fds {} (baseline {baseline}) 2 s after a client death",
            support::fd_count(&broker)
        );
        fd_settle.push(reaped.elapsed());
    }
    eprintln!(
        "table dropped after waitpid: {}",
        support::summary(&latencies)
    );
    eprintln!(
        "broker fds back to baseline after waitpid: {}",
        support::summary(&fd_settle)
    );
    let late: Vec<&Duration> = latencies
        .iter()
        .filter(|d| **d > TABLE_DROP_LIMIT)
        .collect();
    assert!(
        late.is_empty(),
        "{} of 20 tables outlived their process by more than {TABLE_DROP_LIMIT:?}: {late:?} ({})",
        late.len(),
        support::summary(&latencies)
    );
    drop(env);
}

// ---------------------------------------------------------------------------------------------
// 3. A reused pid does not inherit a table.
// ---------------------------------------------------------------------------------------------

/// The pid the namespace hands to process A, then to process B.
const REUSED_PID: u32 = 100;

fn set_ns_last_pid(pid: u32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
        .expect("writing /proc/sys/kernel/ns_last_pid");
}

/// Gives this process (pid 1 of a new PID namespace) a mount namespace of its own with a `/proc`
/// that shows its PID namespace, as the broker it will start reads `/proc/<pid>`.
fn mount_own_proc() {
    // SAFETY: unshare and mount take flags and NUL-terminated strings that outlive the calls.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            0,
            "making / private: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            0,
            "mounting proc: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Forks a child that gets pid [`REUSED_PID`] in this namespace (checked in the child).
fn fork_at_reused_pid(f: impl FnOnce(End) -> i32) -> (Child, End) {
    set_ns_last_pid(REUSED_PID);
    let (child, end) = procs::fork_with_channel(|end| {
        assert_eq!(
            std::process::id(),
            REUSED_PID,
            "ns_last_pid did not steer the fork"
        );
        f(end)
    });
    assert_eq!(
        child.raw() as u32,
        REUSED_PID,
        "ns_last_pid did not steer the fork"
    );
    (child, end)
}

/// The namespace's init: runs A, then B at A's pid, then kills the namespace's broker.
fn pid_namespace_init(outer_ns: u64, dir: std::path::PathBuf) -> i32 {
    assert_eq!(std::process::id(), 1);
    mount_own_proc();
    let ns = shalloc_protocol::rendezvous::pid_namespace_id().unwrap();
    assert_ne!(ns, outer_ns, "not in a new PID namespace");

    // A: allocates into its own table and keeps a view; init allocates into A's table too.
    let (mut a, mut a_end) = fork_at_reused_pid(|mut end| {
        let me = Pid::current();
        let h = alloc(b"A's block", me).unwrap();
        let _view = lock(h, me).unwrap();
        let h2 = alloc(b"A's second block", me).unwrap();
        end.send(h.as_raw());
        end.send(h2.as_raw());
        end.recv(); // until init has put a block into our table too
        0
    });
    let a_pid = a.pid();
    let own = [
        Handle::from_raw(a_end.recv()).unwrap(),
        Handle::from_raw(a_end.recv()).unwrap(),
    ];
    let given = alloc(b"given to A by init", a_pid).unwrap();
    assert_eq!(procs::table_handles(a_pid), Some(3));
    let broker = broker_pid().unwrap().as_raw();
    let rendezvous = shalloc_protocol::rendezvous::Rendezvous::in_dir(&dir).unwrap();
    assert_eq!(rendezvous.broker_pid_hint(), Some(broker));
    a_end.send(1);
    a.expect_success();

    // B: forked at once at A's pid (no waiting for the broker to notice A's death).
    let stale: Vec<Handle> = own.into_iter().chain([given]).collect();
    let stale_values: Vec<u32> = stale.iter().map(|h| h.as_raw()).collect();
    let (mut b, mut b_end) = fork_at_reused_pid(move |mut end| {
        let me = Pid::current();
        for h in &stale {
            match lock(*h, me) {
                Err(Error::InvalidHandle { .. }) => {}
                Ok(v) => panic!("B locked A's handle {h}: {:?}", v.to_vec()),
                Err(e) => panic!("B's lock of A's handle {h}: {e:?}"),
            }
            assert!(matches!(free(*h, me), Err(Error::InvalidHandle { .. })));
            assert!(matches!(
                map_handle(*h, me, me),
                Err(Error::InvalidHandle { .. })
            ));
        }
        // B's table starts empty: the broker lists none for this pid.
        assert_eq!(procs::table_handles(me), None, "B inherited a table");
        let h = alloc(b"B's own block", me).unwrap();
        assert!(!stale.contains(&h));
        assert_eq!(procs::table_handles(me), Some(1));
        assert_eq!(lock(h, me).unwrap().to_vec(), b"B's own block");
        free(h, me).unwrap();
        end.send(1);
        0
    });
    assert_eq!(b.pid(), a_pid);
    assert_eq!(b_end.recv(), 1);
    b.expect_success();
    // Init's own view of things: no table for the pid any more, no handles at all.
    assert_eq!(procs::table_handles(a_pid), None);
    assert_eq!(procs::broker_handles(), 0);

    // The namespace's broker is init's child now (orphans come to init): kill and reap it.
    assert_eq!(rendezvous.broker_pid_hint(), Some(broker));
    eprintln!(
        "PID namespace {ns}: A (pid {a_pid}) left 3 handles {stale_values:?}; B got pid {}, found \
         no table, and lock, free and map of A's handles failed with InvalidHandle; the \
         namespace's broker (pid {broker} in it, lock file {}) is killed now",
        b.pid(),
        rendezvous.broker_lock().display()
    );
    // SAFETY: kill takes plain integers; `broker` is a live child of this process (not yet reaped).
    unsafe { libc::kill(broker as i32, libc::SIGKILL) };
    assert_eq!(
        common::wait_exit(broker as i32, Duration::from_secs(5)),
        128 + libc::SIGKILL
    );
    0
}

#[test]
fn a_process_given_a_dead_processs_pid_starts_with_an_empty_table() {
    let env = TestEnv::new();
    let outer_ns = shalloc_protocol::rendezvous::pid_namespace_id().unwrap();
    // Our next child is pid 1 of a new PID namespace. Only this test runs in this process, and it
    // forks once.
    // SAFETY: unshare takes flags; CLONE_NEWPID changes only where our future children live.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWPID): {}",
        std::io::Error::last_os_error()
    );
    let dir = env.dir.clone();
    // Killing init (when the test fails) kills everything in the namespace, its broker included.
    let mut init = Child::fork(move || pid_namespace_init(outer_ns, dir));
    init.expect_success();
    let locks = support::held_broker_locks(&env.dir);
    assert!(locks.is_empty(), "a broker still runs: {locks:?}");
    let names: Vec<String> = std::fs::read_dir(&env.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("pidns-") && !n.contains(&outer_ns.to_string())),
        "the namespace's broker left no files in {}: {names:?}",
        env.dir.display()
    );
    assert!(env.running_broker().is_none());
}

// ---------------------------------------------------------------------------------------------
// 5. The client leaks nothing.
// ---------------------------------------------------------------------------------------------

/// Cycles of the client-leak test.
const LEAK_CYCLES: u64 = 100_000;

#[test]
fn a_hundred_thousand_cycles_leave_no_descriptor_or_mapping_behind() {
    let env = TestEnv::new();
    let me = Pid::current();
    let sizes = [64usize, 100, 4096, 5000, 65536];
    let data: Vec<Vec<u8>> = sizes.iter().map(|s| vec![0xA5; *s]).collect();
    let cycle = |n: u64| {
        let d = &data[n as usize % data.len()];
        let h = alloc(d, me).unwrap();
        let v = lock(h, me).unwrap();
        assert_eq!(v.len(), d.len());
        drop(v);
        free(h, me).unwrap();
        if n % 100 == 0 {
            // The failure paths too: a freed handle, and a process that does not exist.
            assert!(matches!(lock(h, me), Err(Error::InvalidHandle { .. })));
            assert!(matches!(free(h, me), Err(Error::InvalidHandle { .. })));
            assert!(lock(h, Pid::from_raw(i32::MAX as u32)).is_err());
        }
    };
    // Warm-up: the connection is open, the allocator has its arenas.
    for n in 0..1000 {
        cycle(n);
    }
    let fds0 = support::fd_count("self");
    let maps0 = support::maps("self").len();
    let rss0 = support::vm_rss_kib("self");
    let started = Instant::now();
    for n in 0..LEAK_CYCLES {
        cycle(n);
    }
    let took = started.elapsed();
    let fds1 = support::fd_count("self");
    let maps1 = support::maps("self").len();
    let rss1 = support::vm_rss_kib("self");
    eprintln!(
        "{LEAK_CYCLES} cycles in {took:?}: fds {fds0} -> {fds1}, maps lines {maps0} -> {maps1}, \
         VmRSS {rss0} -> {rss1} KiB, live views {}",
        live_views()
    );
    // Every descriptor a call opens (the block's memfd, the one a lock receives) is closed before
    // it returns, and the connection was open before the first count: no slack.
    assert_eq!(fds1, fds0, "descriptors");
    // What is left are the warm blocks of the pool, which it bounds, and which it gives back.
    let (pooled, _) = shalloc::pool::pooled();
    assert_eq!(support::memfd_fds("self"), pooled);
    assert!((1..=32).contains(&pooled), "{pooled} blocks pooled");
    assert_eq!(shalloc::pool::trim(), pooled);
    assert_eq!(support::memfd_fds("self"), 0);
    // Views are unmapped on drop: no memfd mapping may remain but the one of our own table, which
    // lives as long as the process. Other mappings belong to the allocator, which may split or add
    // an arena region; allow 4 lines for that.
    let maps = support::memfd_maps("self");
    assert!(
        maps.len() == 1 && maps[0].contains("memfd:shalloc-table"),
        "{maps:?}"
    );
    assert!(maps1 <= maps0 + 4, "mappings {maps0} -> {maps1}");
    assert_eq!(live_views(), 0);
    drop(env);
}
