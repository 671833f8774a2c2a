//! Switching the current role for a piece of Rust code (as SECURITY DEFINER does): eventic's
//! own DDL and bookkeeping run as the extension owner, jobs run as the role that enqueued them.

use pgrx::pg_sys;
use pgrx::prelude::*;

use std::cell::Cell;

use crate::catalog_cache::{catalog_generation, watch};
use crate::errors::{EventicError, Result};

/// Runs `f` with `role` as the current user, then switches back (also when an ERROR unwinds).
/// SET ROLE is not allowed inside (SECURITY_LOCAL_USERID_CHANGE).
pub fn run_as<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the user id and security context saved below.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain reads and a switch of the current user id.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let _restore = Restore(saved_user, saved_context);
    f()
}

/// Runs a job's code as `role` the way VACUUM runs index functions: a security-restricted
/// operation (no SET ROLE, no temporary objects) whose setting changes (set_config, SET) are
/// undone afterwards, so nothing a job does outlives it in the session that ran it.
pub fn run_job_as<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    struct Restore(pg_sys::Oid, i32, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: undoes this nest level's GUC changes, then restores the user id and
            // security context saved below.
            unsafe {
                pg_sys::AtEOXact_GUC(false, self.2);
                pg_sys::SetUserIdAndSecContext(self.0, self.1);
            }
        }
    }
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain reads, a switch of the current user id, a new GUC nest level.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        pg_sys::NewGUCNestLevel()
    };
    let _restore = Restore(saved_user, saved_context, nest_level);
    f()
}

thread_local! {
    /// The extension owner and the catalog generation it was read under.
    static OWNER: Cell<Option<(u64, pg_sys::Oid)>> = const { Cell::new(None) };
}

/// The role that owns the extension (read once per backend, again after DROP EXTENSION).
pub fn extension_owner() -> Result<pg_sys::Oid> {
    let generation = catalog_generation();
    if let Some((seen, owner)) = OWNER.with(Cell::get) {
        if seen == generation {
            return Ok(owner);
        }
    }
    let (owner, queues_table) = Spi::connect(|client| -> Result<_> {
        let stmt = crate::spi_plans::plan(client, EXTENSION_OWNER, &[], false)?;
        let rows = client.select(&*stmt, Some(1), &[])?;
        if rows.is_empty() {
            return Err(EventicError::Internal(
                "extension eventic is not installed".into(),
            ));
        }
        let row = rows.first();
        Ok((
            row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
        ))
    })?;
    // dropping the extension drops eventic.queues, whose invalidation bumps the generation
    watch(queues_table);
    OWNER.with(|cached| cached.set(Some((generation, owner))));
    Ok(owner)
}

const EXTENSION_OWNER: &str = "SELECT extowner, to_regclass('eventic.queues')::oid \
       FROM pg_extension WHERE extname = 'eventic'";

/// Runs `f` as the extension owner: only for eventic's own fixed DDL and bookkeeping rows
/// (queue tables, eventic.classes/queues), never for user code.
pub fn as_extension_owner<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let owner = extension_owner()?;
    run_as(owner, f)
}

/// The current role.
pub fn current_role() -> pg_sys::Oid {
    // SAFETY: reads the current user id.
    unsafe { pg_sys::GetUserId() }
}

pub fn is_superuser() -> bool {
    // SAFETY: reads the current user's cached catalog entry.
    unsafe { pg_sys::superuser() }
}
