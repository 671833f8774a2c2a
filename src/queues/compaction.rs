//! Giving an emptied queue table its space back. A drained queue is all dead rows until
//! autovacuum comes (at most once per `autovacuum_naptime`, a minute by default): a burst of
//! a million jobs leaves a table of hundreds of MB that every claim's index scan walks past.
//! When a queue table is large and holds no row at all, the worker truncates it, the way
//! PgQ rotates its tables: a new empty file at once, no vacuum needed.
//!
//! Truncating is safe only when no one can be adding a row: the worker takes the table's
//! ACCESS EXCLUSIVE lock with NOWAIT (any enqueuer, consumer or open cursor holds a lesser
//! lock and makes it give up at once, to try again later), then looks for rows with a fresh
//! snapshot, which sees every committed row since nothing else can write. Its lock is held
//! only for the short transaction of the TRUNCATE.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::errors::Result;
use crate::roles::as_extension_owner;

/// Tables smaller than this are left to autovacuum.
const COMPACT_ABOVE_BYTES: i64 = 8 * 1024 * 1024;

/// A queue whose table could not be truncated (busy, or not empty) is looked at again after
/// this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_TRIED: RefCell<HashMap<String, Instant>> = RefCell::new(HashMap::new());
}

/// Queues whose table is over [`COMPACT_ABOVE_BYTES`] and not looked at in the last
/// [`RETRY_AFTER`]. Its size is read from the file, not from statistics.
pub fn candidates() -> Result<Vec<String>> {
    let large: Vec<String> = as_extension_owner(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT queue_name FROM eventic.queues
                      WHERE pg_relation_size(format('eventic.%I', 'queue_' || queue_name)) > $1
                      ORDER BY queue_name",
                    None,
                    &[COMPACT_ABOVE_BYTES.into()],
                )?
                .map(|row| row.get::<String>(1))
                .filter_map(|name| name.transpose())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(Into::into)
        })
    })?;
    let now = Instant::now();
    Ok(LAST_TRIED.with(|tried| {
        let tried = tried.borrow();
        large
            .into_iter()
            .filter(|queue| {
                tried
                    .get(queue)
                    .is_none_or(|at| now.duration_since(*at) >= RETRY_AFTER)
            })
            .collect()
    }))
}

/// Truncate the table of `queue_name` if it is empty and no one else is using it. Returns
/// whether it did. Run in a transaction of its own, which should commit at once (it holds the
/// table's ACCESS EXCLUSIVE lock until then).
pub fn truncate_if_empty(queue_name: &str) -> Result<bool> {
    LAST_TRIED.with(|tried| {
        tried
            .borrow_mut()
            .insert(queue_name.to_string(), Instant::now())
    });
    let table = super::queue_table(queue_name)?;
    as_extension_owner(|| {
        // NOWAIT's error (55P03) rolls back only this subtransaction
        let locked = crate::subxact::in_subtransaction(|| {
            Spi::run(&format!(
                "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE NOWAIT"
            ))
        });
        if !matches!(locked, Ok(Ok(()))) {
            return Ok(false);
        }
        let empty = Spi::get_one::<bool>(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"))?
            .unwrap_or(false);
        if empty {
            Spi::run(&format!("TRUNCATE {table}"))?;
        }
        Ok(empty)
    })
}
