//! Who may read and write the records of a class (DESIGN.md §6), in Postgres's own terms: a
//! class's records belong to its owner (and the roles that have its privileges); others read
//! them with SELECT on the class's view or tracked table, and write them with INSERT, UPDATE
//! or DELETE there. Superusers may do anything.
//!
//! The row-level security policies of `eventic.records` call [`may_read_class`] and
//! [`may_write_class`] for every row they check, so the answers are kept per backend until
//! a class, a grant or a role membership changes (`crate::catalog_cache`).

use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::catalog_cache::{acl_generation, catalog_generation, Generational};
use crate::classes::cache;
use crate::errors::{EventicError, Result};
use crate::roles::{current_role, has_privs_of, is_superuser};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read = 0,
    Write = 1,
}

struct LastAnswer {
    generation: u64,
    role: pg_sys::Oid,
    class: String,
    allowed: bool,
}

thread_local! {
    /// The last answer for reads and for writes.
    static LAST: RefCell<[Option<LastAnswer>; 2]> = const { RefCell::new([None, None]) };
    /// (role, class, access) → allowed, under one (catalog, acl) generation pair.
    static ANSWERS: RefCell<Generational<(u32, String, Access), bool>> =
        RefCell::new(Generational::new());
}

fn relation_exists(relid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache probe by oid.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relid),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
            pg_sys::Datum::from(0usize),
        )
    }
}

fn look_up(role: pg_sys::Oid, class_name: &str, access: Access) -> Result<bool> {
    // a class that is not registered (dropped, its records kept) belongs to no one
    let Some(class) = cache::lookup(class_name)? else {
        return Ok(false);
    };
    if has_privs_of(role, class.owner) {
        return Ok(true);
    }
    let mode = match access {
        Access::Read => pg_sys::ACL_SELECT,
        Access::Write => pg_sys::ACL_INSERT | pg_sys::ACL_UPDATE | pg_sys::ACL_DELETE,
    } as pg_sys::AclMode;
    Ok(class.grant_targets.iter().any(|&relid| {
        relation_exists(relid)
            // SAFETY: the relation exists (checked just above, in this transaction).
            && unsafe {
                pg_sys::pg_class_aclmask(relid, role, mode, pg_sys::AclMaskHow::ACLMASK_ANY)
            } != 0
    }))
}

/// Whether the current role may read (or write) records of `class_name`.
pub fn may(class_name: &str, access: Access) -> Result<bool> {
    if is_superuser() {
        return Ok(true);
    }
    let role = current_role();
    // both generations in one number: either moving on empties the answers
    let generation = catalog_generation().wrapping_mul(1 << 32) ^ acl_generation();
    // the policies ask the same question for every row of a statement: the last answer for
    // each kind of access is checked first, without building a key
    let last = LAST.with(|last| {
        last.borrow()[access as usize]
            .as_ref()
            .filter(|l| l.generation == generation && l.role == role && l.class == class_name)
            .map(|l| l.allowed)
    });
    if let Some(allowed) = last {
        return Ok(allowed);
    }
    let allowed = may_uncached(role, generation, class_name, access)?;
    LAST.with(|last| {
        last.borrow_mut()[access as usize] = Some(LastAnswer {
            generation,
            role,
            class: class_name.to_string(),
            allowed,
        })
    });
    Ok(allowed)
}

fn may_uncached(
    role: pg_sys::Oid,
    generation: u64,
    class_name: &str,
    access: Access,
) -> Result<bool> {
    let key = (role.to_u32(), class_name.to_string(), access);
    if let Some(found) = ANSWERS.with(|answers| answers.borrow_mut().get(generation, &key)) {
        return Ok(found);
    }
    let allowed = look_up(role, class_name, access)?;
    ANSWERS.with(|answers| answers.borrow_mut().insert(generation, key, allowed));
    Ok(allowed)
}

/// 42501 unless the current role may read (or write) records of `class_name`.
pub fn require(class_name: &str, access: Access) -> Result<()> {
    if may(class_name, access)? {
        return Ok(());
    }
    let (verb, grant) = match access {
        Access::Read => ("read", "SELECT"),
        Access::Write => ("write", "INSERT, UPDATE or DELETE"),
    };
    Err(EventicError::not_allowed(
        format!("permission denied to {verb} records of class {class_name}"),
        format!(
            "The records of a class belong to its owner; another role needs {grant} on the \
             class's view (eventic.register_class(class, view_schema => ...)) or tracked table."
        ),
    ))
}

/// Whether the current role may read records of class `class_name` (used by the row-level
/// security policies of eventic.records).
// parallel restricted: a parallel worker could not run the class lookup's SPI
#[pg_extern(stable, parallel_restricted)]
fn may_read_class(class_name: Option<&str>) -> bool {
    use crate::errors::OrReport;
    match class_name {
        None => false,
        Some(name) => may(name, Access::Read).or_report(),
    }
}

/// Whether the current role may write records of class `class_name`.
#[pg_extern(stable, parallel_restricted)]
fn may_write_class(class_name: Option<&str>) -> bool {
    use crate::errors::OrReport;
    match class_name {
        None => false,
        Some(name) => may(name, Access::Write).or_report(),
    }
}
