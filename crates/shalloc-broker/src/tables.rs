//! The handle tables: one per process, each mapping handle values to blocks.
//!
//! A block lives as long as some table holds a handle to it (and, in other processes, as long as
//! their views and descriptors keep the memfd alive). Handle values are unique across all tables,
//! so `owner_of` answers which table a value belongs to.

use std::collections::HashMap;
use std::rc::Rc;

use crate::block::Block;
use crate::handles::HandleValues;
use crate::process::Process;

/// One process's table.
#[derive(Debug)]
pub(crate) struct Table {
    pub process: Process,
    pub handles: HashMap<u32, Rc<Block>>,
}

/// Every table of the broker.
#[derive(Debug)]
pub(crate) struct Tables {
    by_pid: HashMap<u32, Table>,
    owner_of: HashMap<u32, u32>,
    values: HandleValues,
}

impl Tables {
    pub fn new(values: HandleValues) -> Self {
        Tables {
            by_pid: HashMap::new(),
            owner_of: HashMap::new(),
            values,
        }
    }

    /// The table of `pid`, if one exists and its process has not exited. A table whose process has
    /// exited is dropped here, before anyone can reach it, even if the exit event is still queued.
    pub fn live(&mut self, pid: u32) -> Option<&mut Table> {
        if self
            .by_pid
            .get(&pid)
            .is_some_and(|t| t.process.has_exited())
        {
            self.drop_table(pid);
        }
        self.by_pid.get_mut(&pid)
    }

    /// Adds an empty table for `process`, which must have none.
    pub fn insert(&mut self, process: Process) -> &mut Table {
        let pid = process.pid;
        self.by_pid.entry(pid).or_insert(Table {
            process,
            handles: HashMap::new(),
        })
    }

    /// Puts `block` into `pid`'s table (which must exist) under a new handle value.
    pub fn put(&mut self, pid: u32, block: Rc<Block>) -> Option<u32> {
        let owner_of = &self.owner_of;
        let handle = self.values.take(|h| owner_of.contains_key(&h))?;
        let table = self.by_pid.get_mut(&pid)?;
        table.handles.insert(handle, block);
        self.owner_of.insert(handle, pid);
        Some(handle)
    }

    /// Closes `handle` in `pid`'s table; drops the table when it becomes empty.
    pub fn remove(&mut self, pid: u32, handle: u32) -> Option<Rc<Block>> {
        let table = self.by_pid.get_mut(&pid)?;
        let block = table.handles.remove(&handle)?;
        self.owner_of.remove(&handle);
        if table.handles.is_empty() {
            self.by_pid.remove(&pid);
        }
        Some(block)
    }

    /// Drops `pid`'s table and closes all its handles (its process exited).
    pub fn drop_table(&mut self, pid: u32) -> usize {
        let Some(table) = self.by_pid.remove(&pid) else {
            return 0;
        };
        for handle in table.handles.keys() {
            self.owner_of.remove(handle);
        }
        table.handles.len()
    }

    /// Whether `pid` has a table whose process has exited.
    pub fn exited(&self, pid: u32) -> bool {
        self.by_pid
            .get(&pid)
            .is_some_and(|t| t.process.has_exited())
    }

    /// The number of live handles over all tables.
    pub fn handle_count(&self) -> usize {
        self.owner_of.len()
    }

    /// Every table, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Table> {
        self.by_pid.values()
    }

    /// The number of tables.
    pub fn table_count(&self) -> usize {
        self.by_pid.len()
    }
}
