//! The transactional outbox (DESIGN.md §2): every new version of a class with subscribers
//! enqueues an event job per handler, in the transaction that wrote the version.
//!
//! The insert trigger of eventic.records builds the events of the row it sees (it has the
//! version's data at hand) and [`stash`]es them; the write path [`publish`]es them only once
//! its INSERT has taken effect. A BEFORE trigger also runs for a row that `ON CONFLICT DO
//! NOTHING` then skips (another writer took that version number): enqueued from the trigger,
//! such an event would carry a version and data that never committed.

use std::cell::RefCell;

use pgrx::pg_sys;
use serde_json::Value;

use crate::errors::Result;
use crate::queues::{announce, insert_job, queue_table, JobArgs, NewJob};

/// The events of one new version: `handler(event)` for each (handler, subscriber) on a queue.
pub struct Events {
    pub queue_name: String,
    pub handlers: Vec<(pg_sys::Oid, pg_sys::Oid)>,
    pub event: Value,
}

thread_local! {
    /// Events of the row being inserted, until its INSERT is known to have happened.
    static PENDING: RefCell<Option<Events>> = const { RefCell::new(None) };
}

/// Called by the insert trigger: the events of the row it sees.
pub fn stash(events: Events) {
    PENDING.with(|pending| *pending.borrow_mut() = Some(events));
}

/// Called before each insert of a version: nothing stashed by an earlier, failed statement
/// may be published with this one.
pub fn discard() {
    PENDING.with(|pending| pending.borrow_mut().take());
}

/// Called after an insert that appended its row: enqueue the stashed events (each handler
/// runs as the role that subscribed it, never as the writer).
pub fn publish() -> Result<()> {
    let Some(events) = PENDING.with(|pending| pending.borrow_mut().take()) else {
        return Ok(());
    };
    if crate::citus::on_shard() {
        // a write shipped to this node (Citus): the caller enqueues it, see take_event
        stash(events);
        return Ok(());
    }
    let table = queue_table(&events.queue_name)?;
    for &(handler, subscriber) in &events.handlers {
        insert_job(
            &table,
            NewJob {
                fn_oid: handler,
                args: JobArgs::Json(events.event.clone()),
                run_at: None,
                priority: 0,
                dedup_key: None,
                max_attempts: 5,
                enqueued_by: subscriber,
            },
        )?;
    }
    announce(&events.queue_name)
}

/// The event of the version just written, taken instead of enqueued (Citus: the node that
/// shipped the write enqueues it).
pub fn take_event() -> Option<Value> {
    PENDING.with(|pending| pending.borrow_mut().take()).map(|events| events.event)
}
