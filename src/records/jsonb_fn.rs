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
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn concat(a: Datum, b: Datum) -> Datum {
    call_strict(pg_sys::jsonb_concat, &[a, b])
}

/// `doc - keys` (a text[] datum)
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn delete_keys(doc: Datum, keys: Datum) -> Datum {
    call_strict(pg_sys::jsonb_delete_array, &[doc, keys])
}

/// `doc - key` (a text datum)
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn delete_key(doc: Datum, key: Datum) -> Datum {
    call_strict(pg_sys::jsonb_delete, &[doc, key])
}

/// `a <> b`
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn differ(a: Datum, b: Datum) -> bool {
    call_strict(pg_sys::jsonb_ne, &[a, b]).value() != 0
}

/// `jsonb_set(doc, '{name}', value)`: `doc` (an object) with key `name` set to `value`, the
/// same as `doc || jsonb_build_object(name, value)`.
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn set_key(doc: Datum, name: &str, value: Datum) -> Datum {
    let path = vec![name.to_string()].into_datum().unwrap_or(Datum::from(0usize));
    call_strict(pg_sys::jsonb_set, &[doc, path, value, Datum::from(true)])
}

/// `doc -> name`, `None` when the key is absent.
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
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
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
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

/// `base || (over - skip)` for two jsonb objects, in one pass: both objects' keys are stored
/// in jsonb's key order, so they merge like two sorted lists (a key of `over` replaces the
/// same key of `base`) and the result is built once, without the sort `||` does. Anything but
/// two objects goes through the operators instead.
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn merge_objects(base: Datum, over: Datum, skip: Option<&str>) -> Datum {
    unsafe {
        let a = pg_sys::pg_detoast_datum(base.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let b = pg_sys::pg_detoast_datum(over.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        if !is_object(a) || !is_object(b) {
            let over = match skip.and_then(|key| key.into_datum()) {
                Some(key) => delete_key(over, key),
                None => over,
            };
            return concat(base, over);
        }
        let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT, std::ptr::null_mut());
        let mut left = Pairs::new(a, None);
        let mut right = Pairs::new(b, skip.map(str::as_bytes));
        let (mut l, mut r) = (left.next(), right.next());
        loop {
            let take_left = match (&l, &r) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((lk, _)), Some((rk, _))) => match key_order(key_bytes(lk), key_bytes(rk)) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    // the same key: `over`'s value wins
                    std::cmp::Ordering::Equal => {
                        l = left.next();
                        false
                    }
                },
            };
            let (side, pair) = if take_left { (&mut left, &mut l) } else { (&mut right, &mut r) };
            if let Some((mut key, mut value)) = pair.take() {
                pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_KEY, &mut key);
                pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_VALUE, &mut value);
            }
            *pair = side.next();
        }
        let merged = pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_END_OBJECT, std::ptr::null_mut());
        Datum::from(pg_sys::JsonbValueToJsonb(merged))
    }
}

unsafe fn is_object(jb: *mut pg_sys::Jsonb) -> bool {
    // JsonContainerIsObject: the container header's object flag
    unsafe { (*jb).root.header & pg_sys::JB_FOBJECT != 0 }
}

/// The top-level (key, value) pairs of a jsonb object in stored order, nested values as
/// binary (not descended into), leaving out the key `skip`.
struct Pairs<'a> {
    it: *mut pg_sys::JsonbIterator,
    skip: Option<&'a [u8]>,
}

impl<'a> Pairs<'a> {
    unsafe fn new(jb: *mut pg_sys::Jsonb, skip: Option<&'a [u8]>) -> Self {
        unsafe {
            let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            pg_sys::JsonbIteratorNext(&mut it, &mut v, true); // WJB_BEGIN_OBJECT
            Pairs { it, skip }
        }
    }

    fn next(&mut self) -> Option<(pg_sys::JsonbValue, pg_sys::JsonbValue)> {
        loop {
            // SAFETY: an iterator over a live object container; KEY is followed by its VALUE.
            unsafe {
                let mut key: pg_sys::JsonbValue = std::mem::zeroed();
                if pg_sys::JsonbIteratorNext(&mut self.it, &mut key, true) != pg_sys::JsonbIteratorToken::WJB_KEY {
                    return None;
                }
                let mut value: pg_sys::JsonbValue = std::mem::zeroed();
                pg_sys::JsonbIteratorNext(&mut self.it, &mut value, true);
                if self.skip != Some(key_bytes(&key)) {
                    return Some((key, value));
                }
            }
        }
    }
}

fn key_bytes(key: &pg_sys::JsonbValue) -> &[u8] {
    // SAFETY: a jbvString key returned by the iterator points into its container.
    unsafe {
        let s = key.val.string;
        std::slice::from_raw_parts(s.val.cast::<u8>(), s.len.max(0) as usize)
    }
}

/// jsonb's order of object keys: shorter first, then bytewise.
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// `to_jsonb(row) - skip` for a row whose columns (but `skip`) are all of types whose JSON
/// form is plain (bool, int2/int4/int8, text, varchar), built straight from the columns: the
/// same jsonb `to_jsonb` makes, without its detour through each column's text output (and,
/// for integers, `numeric_in`). `None` for a row with a column of any other type.
///
/// # Safety
/// `tuple` is a row of `desc`, both live while the result is built.
pub unsafe fn plain_row_to_jsonb(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, skip: &str) -> Option<Datum> {
    unsafe {
        let natts = (*desc).natts as usize;
        let attrs = (*desc).attrs.as_slice(natts);
        let name_of = |att: &pg_sys::FormData_pg_attribute| std::ffi::CStr::from_ptr(att.attname.data.as_ptr()).to_bytes();
        let plain = |typid: pg_sys::Oid| {
            matches!(typid, pg_sys::BOOLOID | pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID | pg_sys::TEXTOID | pg_sys::VARCHAROID)
        };
        if attrs.iter().any(|att| !att.attisdropped && !plain(att.atttypid) && name_of(att) != skip.as_bytes()) {
            return None;
        }
        let mut values = vec![Datum::from(0usize); natts];
        let mut nulls = vec![false; natts];
        pg_sys::heap_deform_tuple(tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let mut pairs: Vec<(&[u8], pg_sys::JsonbValue)> = Vec::with_capacity(natts);
        for (i, att) in attrs.iter().enumerate() {
            let name = name_of(att);
            if att.attisdropped || name == skip.as_bytes() {
                continue;
            }
            let mut value: pg_sys::JsonbValue = std::mem::zeroed();
            let datum = values[i];
            if nulls[i] {
                value.type_ = pg_sys::jbvType::jbvNull;
            } else {
                match att.atttypid {
                    pg_sys::BOOLOID => {
                        value.type_ = pg_sys::jbvType::jbvBool;
                        value.val.boolean = datum.value() != 0;
                    }
                    pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
                        let n = match att.atttypid {
                            pg_sys::INT2OID => i64::from(datum.value() as i16),
                            pg_sys::INT4OID => i64::from(datum.value() as i32),
                            _ => datum.value() as i64,
                        };
                        value.type_ = pg_sys::jbvType::jbvNumeric;
                        value.val.numeric = pg_sys::int64_to_numeric(n);
                    }
                    _ => {
                        let text = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
                        let bytes = pgrx::varlena::varlena_to_byte_slice(text);
                        value.type_ = pg_sys::jbvType::jbvString;
                        value.val.string.len = bytes.len() as i32;
                        value.val.string.val = bytes.as_ptr().cast_mut().cast();
                    }
                }
            }
            pairs.push((name, value));
        }
        pairs.sort_by(|a, b| key_order(a.0, b.0));
        let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT, std::ptr::null_mut());
        for (name, mut value) in pairs {
            let mut key: pg_sys::JsonbValue = std::mem::zeroed();
            key.type_ = pg_sys::jbvType::jbvString;
            key.val.string.len = name.len() as i32;
            key.val.string.val = name.as_ptr().cast_mut().cast();
            pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_KEY, &mut key);
            pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_VALUE, &mut value);
        }
        let object = pg_sys::pushJsonbValue(&mut state, pg_sys::JsonbIteratorToken::WJB_END_OBJECT, std::ptr::null_mut());
        Some(Datum::from(pg_sys::JsonbValueToJsonb(object)))
    }
}
