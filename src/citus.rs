//! Citus (README "Scale-out"): with `eventic.records` distributed by `id`, every version row
//! is written by the node that holds the record's shard.
//!
//! The triggers of `eventic.records` run on the shards, in the backend that executes the
//! shard's statement. A write planned on the coordinator would reach them in a worker's
//! backend, where nothing marks it as eventic's own (the guard refuses it). So the write path
//! ships the whole write there instead: one router query per write, routed by the record's
//! id, calls `_write_on_shard` (records/shipped.rs) on the node holding it, inside the
//! caller's (distributed) transaction. There the usual path runs unchanged: lock, append, the
//! insert trigger with its JSON Schema check (classes are a reference table, on every node).
//! Only the outbox event travels back: queues live on the coordinator, where the caller
//! publishes it.
//!
//! On a single node none of this runs: [`forwards`] is three thread-local reads (the state is
//! looked up once per backend, and again after an invalidation of eventic.records).

use std::cell::Cell;

use pgrx::prelude::*;

use crate::catalog_cache::distribution_generation;
use crate::errors::Result;

thread_local! {
    /// (distribution generation it was computed under + 1, records distributed); 0: unknown.
    static DISTRIBUTED: Cell<(u64, bool)> = const { Cell::new((0, false)) };
    /// True inside `_write_on_shard`: the write happens here, and its outbox event is handed
    /// back to the caller instead of being enqueued on this node.
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// True when writes must be shipped to the node holding the record.
#[inline]
pub fn forwards() -> Result<bool> {
    if ON_SHARD.with(Cell::get) {
        return Ok(false);
    }
    distributed()
}

/// Is eventic.records distributed (cached until its cache entry is invalidated)?
pub fn distributed() -> Result<bool> {
    let generation = distribution_generation() + 1;
    let (seen, distributed) = DISTRIBUTED.with(Cell::get);
    if seen == generation {
        return Ok(distributed);
    }
    let distributed = records_distributed()?;
    DISTRIBUTED.with(|d| d.set((generation, distributed)));
    Ok(distributed)
}

/// True inside `_write_on_shard`.
pub fn on_shard() -> bool {
    ON_SHARD.with(Cell::get)
}

/// Run `f` (a read of the classes, a reference table) where Citus could see a nested
/// distributed execution: in a policy or trigger of a shard run for another node. The read is
/// of the node's own copy of the table. Without Citus loaded, just `f()`.
pub fn allowing_nested<T>(f: impl FnOnce() -> T) -> T {
    const NAME: &std::ffi::CStr = c"citus.allow_nested_distributed_execution";
    // SAFETY: a GUC lookup by name (missing_ok) that returns NULL when Citus is not loaded.
    if unsafe { pg_sys::GetConfigOption(NAME.as_ptr(), true, false) }.is_null() {
        return f();
    }
    // SAFETY: a GUC nest level of our own, popped below (or by the abort of the transaction
    // or subtransaction an error unwinds to).
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            NAME.as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let out = f();
    // SAFETY: pops the level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    out
}

/// Is `eventic.records` a Citus distributed table in this database? (Asked again after any
/// invalidation of the table's cache entry, which `create_distributed_table` sends.)
fn records_distributed() -> Result<bool> {
    let records = Spi::get_one::<pg_sys::Oid>("SELECT 'eventic.records'::regclass::oid")?
        .unwrap_or(pg_sys::InvalidOid);
    crate::catalog_cache::watch_records(records);
    let citus = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')",
    )?
    .unwrap_or(false);
    if !citus {
        return Ok(false);
    }
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition \
          WHERE logicalrelid = 'eventic.records'::regclass AND partmethod = 'h')",
    )?
    .unwrap_or(false))
}

/// Marks the write of `_write_on_shard` for as long as it lives (also when an ERROR unwinds).
pub struct OnShard {
    previous: bool,
}

impl OnShard {
    pub fn begin() -> Self {
        OnShard {
            previous: ON_SHARD.with(|s| s.replace(true)),
        }
    }
}

impl Drop for OnShard {
    fn drop(&mut self) {
        ON_SHARD.with(|s| s.set(self.previous));
    }
}
