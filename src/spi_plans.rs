//! Prepared SPI statements kept for the life of the backend, so the hot paths (`set_field`,
//! `hydrate`) parse and plan their SQL once per connection, not once per call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use crate::errors::Result;

thread_local! {
    /// Statements built at run time (a queue's table name in them), keyed by their text.
    static DYNAMIC_PLANS: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
    /// Keyed by the address of the `&'static str` (each statement is a constant): hashing a
    /// pointer is free, hashing the SQL text on every call is not.
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// The kept plan for `sql`, preparing it on first use. `mutating` plans always run with a fresh
/// snapshot (SPI read_only = false), which the write path needs after taking its lock.
///
/// Kept plans are run with `SpiClient::select`, also when they write: pgrx's `update` (and
/// `Spi::get_one`, `Spi::run`, `connect_mut`) first assigns the transaction an xid, so a
/// read path (a workflow's status, an idle worker's empty claim) would write a commit
/// record, and fail on a hot standby. A mutating plan run by `select` is executed with
/// read_only = false all the same; a statement that writes gets its xid when it writes.
pub fn plan(
    client: &SpiClient<'_>,
    sql: &'static str,
    args: &[PgOid],
    mutating: bool,
) -> Result<Rc<OwnedPreparedStatement>> {
    if let Some(found) = PLANS.with(|plans| plans.borrow().get(&(sql.as_ptr() as usize)).cloned()) {
        return Ok(found);
    }
    let prepared = if mutating {
        client.prepare_mut(sql, args)?
    } else {
        client.prepare(sql, args)?
    };
    let kept = Rc::new(prepared.keep());
    PLANS.with(|plans| {
        plans
            .borrow_mut()
            .insert(sql.as_ptr() as usize, kept.clone())
    });
    Ok(kept)
}

/// The first column of the first row of a statement that may return no row (an UPDATE …
/// RETURNING that matched nothing): `None` then, instead of an error.
pub fn optional_value<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    match pgrx::Spi::get_one_with_args::<T>(sql, args) {
        Ok(value) => Ok(value),
        Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

/// The kept plan of a statement built at run time (e.g. for one queue's table), prepared on
/// first use. Always mutating (fresh snapshot).
pub fn dynamic_plan(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[PgOid],
) -> Result<Rc<OwnedPreparedStatement>> {
    if let Some(found) = DYNAMIC_PLANS.with(|plans| plans.borrow().get(sql).cloned()) {
        return Ok(found);
    }
    let kept = Rc::new(client.prepare_mut(sql, args)?.keep());
    DYNAMIC_PLANS.with(|plans| plans.borrow_mut().insert(sql.to_string(), kept.clone()));
    Ok(kept)
}

/// [`optional_value`] through a kept plan of the statement (for statements built per queue).
pub fn optional_value_planned<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &str,
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    pgrx::Spi::connect(|client| {
        let stmt = dynamic_plan(client, sql, types)?;
        let mut rows = client.select(&*stmt, Some(1), args)?;
        match rows.next() {
            Some(row) => Ok(row.get::<T>(1)?),
            None => Ok(None),
        }
    })
}

/// The parameter types of `args`, for preparing a statement.
fn types_of(args: &[pgrx::datum::DatumWithOid]) -> Vec<PgOid> {
    args.iter().map(|arg| PgOid::from(arg.oid())).collect()
}

/// [`optional_value`] for a constant statement, through its kept plan (parameter types from
/// `args`; mutating: a fresh snapshot).
pub fn kept_value<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &'static str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>> {
    pgrx::Spi::connect(|client| {
        let stmt = plan(client, sql, &types_of(args), true)?;
        let mut rows = client.select(&*stmt, Some(1), args)?;
        match rows.next() {
            Some(row) => Ok(row.get::<T>(1)?),
            None => Ok(None),
        }
    })
}

/// Run a constant statement through its kept plan (parameter types from `args`).
pub fn kept_run(sql: &'static str, args: &[pgrx::datum::DatumWithOid]) -> Result<()> {
    pgrx::Spi::connect(|client| {
        let stmt = plan(client, sql, &types_of(args), true)?;
        client.select(&*stmt, None, args)?;
        Ok(())
    })
}

/// The kept plan of a constant statement (parameter types from `args`; mutating).
pub fn kept(
    client: &SpiClient<'_>,
    sql: &'static str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Rc<OwnedPreparedStatement>> {
    plan(client, sql, &types_of(args), true)
}

/// Runs `f` with sequential scans, bitmap scans and sorts disabled for the planner, then puts
/// the settings back (as a function's `SET` clause does; an error's rollback restores them
/// too). For the claim statements, whose only good plan reads the queue's ready index in
/// order: planned against a queue that has not been analyzed yet (just made, then filled in
/// one transaction), they would otherwise sort the whole queue for every claim. Also for a
/// workflow's step records, read by the worker with a plan it keeps while the table grows.
/// JIT is off too: the disabled paths add 1e10 to the estimated cost, which is past
/// `jit_above_cost`, and a 1 ms claim then spent ~0.3 s compiling (found by the Python worker).
pub fn in_index_order<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    // SAFETY: plain GUC calls in a transaction; the nest level is closed before returning
    let level = unsafe { pgrx::pg_sys::NewGUCNestLevel() };
    for setting in [c"enable_seqscan", c"enable_bitmapscan", c"enable_sort", c"jit"] {
        unsafe {
            pgrx::pg_sys::set_config_option(
                setting.as_ptr(),
                c"off".as_ptr(),
                pgrx::pg_sys::GucContext::PGC_USERSET,
                pgrx::pg_sys::GucSource::PGC_S_SESSION,
                pgrx::pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let result = f();
    unsafe { pgrx::pg_sys::AtEOXact_GUC(true, level) };
    result
}
