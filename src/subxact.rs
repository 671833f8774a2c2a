//! Run Rust code in a subtransaction and get a Postgres ERROR back as a value: the building
//! block of job execution (a failing job rolls back its own effects, not the drain) and of
//! enqueue-time argument checks.

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::{pg_sys, PgTryBuilder};

/// A caught ERROR.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

fn failure_of(caught: CaughtError) -> Failure {
    let report = match &caught {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    Failure {
        sqlstate: crate::errors::sqlstate_text(report.sql_error_code()),
        message: report.message().to_string(),
    }
}

/// Run `f` in a subtransaction: committed (released) when it returns, rolled back when it
/// raises an ERROR, which comes back as `Err`.
pub fn in_subtransaction<T>(f: impl FnOnce() -> T) -> Result<T, Failure> {
    // SAFETY: the sequence plpgsql uses for BEGIN ... EXCEPTION blocks: remember the memory
    // context and resource owner, start an internal subtransaction, restore both afterwards.
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        let mut f = Some(f);
        let outcome = PgTryBuilder::new(AssertUnwindSafe(|| match f.take() {
            Some(f) => Ok(f()),
            None => unreachable!("subtransaction body run twice"),
        }))
        .catch_others(|caught| Err(failure_of(caught)))
        .execute();
        match outcome {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(old_context);
        pg_sys::CurrentResourceOwner = old_owner;
        outcome
    }
}

/// Subtransactions of this transaction that hold an xid (those that wrote), up to which
/// other backends find them in this backend's PGPROC (PGPROC_MAX_CACHED_SUBXIDS, 64); past
/// it the cache overflows and every snapshot in the cluster must look them up in pg_subtrans.
const SUBXID_BUDGET: u8 = 48;

/// Whether this transaction should start no more writing subtransactions (a drain commits
/// what it ran and goes on in a fresh transaction), before the subxid cache overflows.
pub fn subxid_cache_nearly_full() -> bool {
    #[cfg(not(feature = "pg13"))]
    // SAFETY: reads this backend's own PGPROC, which only it writes.
    unsafe {
        let status = (*pg_sys::MyProc).subxidStatus;
        status.overflowed || status.count >= SUBXID_BUDGET
    }
    #[cfg(feature = "pg13")]
    false
}
