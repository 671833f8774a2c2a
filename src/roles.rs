//! Switching the current role for a piece of Rust code (as SECURITY DEFINER does): eventic's
//! own DDL and bookkeeping run as the extension owner, jobs run as the role that enqueued them.

use pgrx::pg_sys;
use pgrx::prelude::*;

use std::cell::Cell;

use crate::catalog_cache::{catalog_generation, watch};
use crate::errors::{EventicError, Result};

/// The search_path of everything eventic runs with privileges other than the caller's (its
/// bookkeeping as the extension owner, the workers' own statements): the caller's (or the
/// database's) path never decides which function or operator such code calls.
pub const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// The search_path jobs, workflow bodies and outbox handlers run with in a worker: the
/// server's default, with pg_catalog searched first (implicitly), never the database owner's
/// `ALTER DATABASE ... SET search_path`.
pub const JOB_SEARCH_PATH: &std::ffi::CStr = c"\"$user\", public";

fn search_path_is(path: &std::ffi::CStr) -> bool {
    // SAFETY: reads the current value of the GUC (a C string owned by guc.c, or NULL).
    let current = unsafe { pg_sys::namespace_search_path };
    !current.is_null() && unsafe { std::ffi::CStr::from_ptr(current) } == path
}

/// Sets search_path in the current GUC nest level (undone when that level closes), unless
/// it is that already: every change makes the backend recompute its path and check each kept
/// plan against it again, which the worker (nested owner, job and step calls) would pay many
/// times per workflow.
fn set_search_path(path: &std::ffi::CStr) {
    if search_path_is(path) {
        return;
    }
    // SAFETY: a plain setting change inside a transaction, saved for the nest level.
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            path.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// A GUC nest level (if one was opened), closed when dropped: the setting changes made in
/// it are undone, as at the end of a function with a SET clause.
struct GucLevel(Option<i32>);

impl GucLevel {
    fn open() -> Self {
        // SAFETY: opens a GUC nest level inside a transaction.
        GucLevel(Some(unsafe { pg_sys::NewGUCNestLevel() }))
    }
}

impl Drop for GucLevel {
    fn drop(&mut self) {
        if let Some(level) = self.0 {
            // SAFETY: closes the nest level opened by `open`.
            unsafe { pg_sys::AtEOXact_GUC(false, level) };
        }
    }
}

/// Sets search_path in a new GUC nest level, closed when the result is dropped. No level
/// when the path is that already: closing a level visits every GUC (PostgreSQL 15), which the
/// worker's nested owner calls would pay many times per workflow.
fn begin_search_path(path: &std::ffi::CStr) -> GucLevel {
    if search_path_is(path) {
        return GucLevel(None);
    }
    let level = GucLevel::open();
    set_search_path(path);
    level
}

/// Runs `f` with `role` as the current user and search_path `pg_catalog, pg_temp`, then
/// switches both back (also when an ERROR unwinds), as a SECURITY DEFINER function with
/// `SET search_path` does. SET ROLE is not allowed inside (SECURITY_LOCAL_USERID_CHANGE).
/// For eventic's own fixed statements only: on PostgreSQL 13-16 the path is an override
/// (no GUC nest level, which PostgreSQL 15 closes by visiting every setting: about 5% of an
/// enqueue), and an override also hides any `SET search_path` of code run inside.
pub fn run_as<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    let _user = SwitchedUser::to(role, 0);
    let _path = pin_search_path();
    f()
}

/// The current user switched (with SECURITY_LOCAL_USERID_CHANGE and `extra` security
/// context flags) until dropped.
struct SwitchedUser(pg_sys::Oid, i32);

impl SwitchedUser {
    fn to(role: pg_sys::Oid, extra: i32) -> Self {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context = 0;
        // SAFETY: plain reads and a switch of the current user id.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                role,
                saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | extra,
            );
        }
        SwitchedUser(saved_user, saved_context)
    }
}

impl Drop for SwitchedUser {
    fn drop(&mut self) {
        // SAFETY: restores the user id and security context saved by `to`.
        unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
    }
}

/// [`PINNED_SEARCH_PATH`] as an override search path, in force until dropped.
#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
struct OverridePath;

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
fn pin_search_path() -> OverridePath {
    OverridePath::push()
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
impl OverridePath {
    fn push() -> Self {
        // SAFETY: an override search path of pg_catalog alone (temporary schemas are never
        // searched for functions and operators; pg_temp last only adds temporary tables,
        // which eventic's statements never name unqualified), copied by Postgres.
        unsafe {
            let mut path = pg_sys::OverrideSearchPath {
                schemas: pg_sys::lappend_oid(std::ptr::null_mut(), pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE)),
                addCatalog: false,
                addTemp: false,
                generation: 0,
            };
            pg_sys::PushOverrideSearchPath(&mut path);
        }
        OverridePath
    }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
impl Drop for OverridePath {
    fn drop(&mut self) {
        // SAFETY: pops the override pushed by `push`, in the same (sub)transaction.
        unsafe { pg_sys::PopOverrideSearchPath() };
    }
}

/// PostgreSQL 17+ has no override search paths: the setting, in a GUC nest level.
#[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16")))]
fn pin_search_path() -> GucLevel {
    begin_search_path(PINNED_SEARCH_PATH)
}

/// Runs eventic's own job functions (`eventic._run_workflow`) as `role` with the pinned
/// search_path as a setting (not an override), so that the user code they run in turn
/// ([`run_job_as`]) gets its own search_path and its `SET`s.
pub fn run_internal_job_as<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    let _user = SwitchedUser::to(role, 0);
    let _path = begin_search_path(PINNED_SEARCH_PATH);
    f()
}

/// For a background worker, once connected: its own statements run with the pinned
/// search_path whatever `ALTER DATABASE/ROLE ... SET search_path` says (session level, so a
/// job's own `SET` and functions' `SET search_path` clauses still apply inside the job).
pub fn pin_worker_search_path() {
    // SAFETY: a plain setting change in a connected background worker.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            PINNED_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

/// Runs a job's code as `role` the way VACUUM runs index functions: a security-restricted
/// operation (no SET ROLE, no temporary objects) whose setting changes (set_config, SET) are
/// undone afterwards, so nothing a job does outlives it in the session that ran it. The job
/// runs with [`JOB_SEARCH_PATH`], in a worker and in `run_pending` alike.
pub fn run_job_as<T>(role: pg_sys::Oid, f: impl FnOnce() -> T) -> T {
    // dropped in reverse order: the job's settings are undone, then the user restored
    let _user = SwitchedUser::to(role, pg_sys::SECURITY_RESTRICTED_OPERATION as i32);
    let _level = GucLevel::open();
    set_search_path(JOB_SEARCH_PATH);
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

/// Whether `role` has the privileges of `owner` (is it, or a member that inherits).
pub fn has_privs_of(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    // SAFETY: a lookup in the cached role memberships.
    owner != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(role, owner) }
}

/// Whether the current role may act for `owner` on what it owns (a class, a queue, a
/// workflow): it is that role, has its privileges, or is a superuser.
pub fn may_manage(owner: pg_sys::Oid) -> bool {
    is_superuser() || has_privs_of(current_role(), owner)
}

/// Whether `role` may EXECUTE function `fn_oid` (which exists).
pub fn may_execute(fn_oid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup of a function that exists.
    let result =
        unsafe { pg_sys::pg_proc_aclcheck(fn_oid, role, pg_sys::ACL_EXECUTE as pg_sys::AclMode) };
    result == pg_sys::AclResult::ACLCHECK_OK
}

pub fn is_superuser() -> bool {
    // SAFETY: reads the current user's cached catalog entry.
    unsafe { pg_sys::superuser() }
}
