//! What `eventic.metrics` needs beyond SQL: whether the workers and the launcher run. They are
//! on the shared board; `pg_stat_activity` shows other roles' backend types only to roles
//! with pg_read_all_stats, and liveness is no secret.

use std::sync::atomic::Ordering;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::runtime::board;

/// The workers connected to this database, and whether eventic's launcher runs (0 and false
/// without shared_preload_libraries).
#[allow(clippy::type_complexity)] // pgrx's named output columns
#[pg_extern(volatile, parallel_safe)]
fn worker_liveness() -> TableIterator<'static, (name!(workers, i32), name!(launcher_up, bool))> {
    if !crate::runtime::preloaded() {
        return TableIterator::once((0, false));
    }
    // SAFETY: a plain read of this backend's database.
    let database = unsafe { pg_sys::MyDatabaseId };
    let workers = board::worker_pids(database).len() as i32;
    let launcher = board::board().launcher_pid.load(Ordering::Acquire);
    // SAFETY: kill with signal 0 only checks that the process exists.
    let launcher_up = launcher > 0 && unsafe { libc::kill(launcher, 0) } == 0;
    TableIterator::once((workers, launcher_up))
}
