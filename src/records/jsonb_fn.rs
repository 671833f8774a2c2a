//! The jsonb operations the direct write path builds a version with, called as the Postgres
//! functions behind `||`, `-`, `jsonb_set`, `->`, `<>` and `to_jsonb` (no SQL statement, no
//! conversion to Rust): exactly what the SQL write path computed with those operators.
//!
//! Every datum passed in must be a non-null jsonb (or text / text[] where named); results are
//! allocated in the current memory context.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys::{self, Datum};
use pgrx::IntoDatum;

fn call(func: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, args: &[Datum]) -> Option<Datum> {
    let args: Vec<Option<Datum>> = args.iter().copied().map(Some).collect();
    // SAFETY: the callers pass the argument types `func` takes (see each wrapper).
    unsafe { pgrx::direct_function_call_as_datum(func, &args) }
}

fn call_strict(func: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, args: &[Datum]) -> Datum {
    // these functions return NULL only for NULL input, which the callers never pass
    call(func, args).unwrap_or(Datum::from(0usize))
}

/// `a || b`
pub unsafe fn concat(a: Datum, b: Datum) -> Datum {
    call_strict(pg_sys::jsonb_concat, &[a, b])
}

/// `doc - keys` (a text[] datum)
pub unsafe fn delete_keys(doc: Datum, keys: Datum) -> Datum {
    call_strict(pg_sys::jsonb_delete_array, &[doc, keys])
}

/// `doc - key` (a text datum)
pub unsafe fn delete_key(doc: Datum, key: Datum) -> Datum {
    call_strict(pg_sys::jsonb_delete, &[doc, key])
}

/// `a <> b`
pub unsafe fn differ(a: Datum, b: Datum) -> bool {
    call_strict(pg_sys::jsonb_ne, &[a, b]).value() != 0
}

/// `jsonb_set(doc, '{name}', value)`: `doc` (an object) with key `name` set to `value`, the
/// same as `doc || jsonb_build_object(name, value)`.
pub unsafe fn set_key(doc: Datum, name: &str, value: Datum) -> Datum {
    let path = vec![name.to_string()].into_datum().unwrap_or(Datum::from(0usize));
    call_strict(pg_sys::jsonb_set, &[doc, path, value, Datum::from(true)])
}

/// `doc -> name`, `None` when the key is absent.
pub unsafe fn field(doc: Datum, name: &str) -> Option<Datum> {
    call(pg_sys::jsonb_object_field, &[doc, name.into_datum()?])
}

/// The empty object `'{}'`.
pub fn empty_object() -> Datum {
    call_strict(pg_sys::jsonb_in, &[Datum::from(c"{}".as_ptr())])
}

thread_local! {
    /// `to_jsonb` set up per row type (it learns its argument's type from the call's
    /// expression), kept for the backend's life in TopMemoryContext.
    static TO_JSONB: RefCell<HashMap<u32, *mut pg_sys::FmgrInfo>> = RefCell::new(HashMap::new());
}

/// `to_jsonb(row)` for a composite datum of row type `rowtype`.
pub unsafe fn row_to_jsonb(row: Datum, rowtype: pg_sys::Oid) -> Datum {
    let flinfo = TO_JSONB.with(|cache| {
        *cache.borrow_mut().entry(rowtype.to_u32()).or_insert_with(|| {
            // SAFETY: building a constant expression and an FmgrInfo in TopMemoryContext.
            unsafe {
                let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
                let arg = pg_sys::makeConst(
                    rowtype,
                    -1,
                    pg_sys::InvalidOid,
                    -1,
                    Datum::from(0usize),
                    true,
                    false,
                );
                let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
                let expr = pg_sys::makeFuncExpr(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    pg_sys::JSONBOID,
                    args,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                );
                let flinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>())
                    .cast::<pg_sys::FmgrInfo>();
                pg_sys::fmgr_info_cxt(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    flinfo,
                    pg_sys::TopMemoryContext,
                );
                (*flinfo).fn_expr = expr.cast();
                pg_sys::MemoryContextSwitchTo(old);
                flinfo
            }
        })
    });
    unsafe { pg_sys::FunctionCall1Coll(flinfo, pg_sys::InvalidOid, row) }
}
