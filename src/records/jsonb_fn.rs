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

/// [`set_key`] for an object `doc`, written straight in jsonb's binary form (see
/// [`merge_stored`]), also telling whether the result differs from `doc`.
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn set_key_telling(doc: Datum, name: &str, value: Datum) -> (Datum, Sameness) {
    unsafe {
        let a = pg_sys::pg_detoast_datum(doc.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let v = pg_sys::pg_detoast_datum(value.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        if let (Some(object), Some((kind, bytes))) = (Stored::object(a), stored_value(v)) {
            let pair = Stored { pairs: vec![(name.as_bytes(), kind, bytes)] };
            if let Some(set) = merge_stored(&object, &pair, None) {
                return set;
            }
        }
        (set_key(doc, name, value), Sameness::Unknown)
    }
}

/// A jsonb value as an item of a container stores it: its JEntry type and bytes (a scalar is
/// stored as an array of one element; an object or array is its root container).
///
/// # Safety
/// `jb` is a detoasted jsonb (4-byte varlena header) that outlives the result.
unsafe fn stored_value<'a>(jb: *const pg_sys::Jsonb) -> Option<(u32, &'a [u8])> {
    unsafe {
        let header = (*jb).root.header;
        let total = pgrx::varlena::varsize_any(jb.cast::<pg_sys::varlena>());
        let root = std::ptr::addr_of!((*jb).root).cast::<u8>();
        if header & JB_FSCALAR == 0 {
            return Some((JENTRY_ISCONTAINER, std::slice::from_raw_parts(root, total.checked_sub(4)?)));
        }
        if header & JB_CMASK != 1 {
            return None;
        }
        // the first entry stores its end offset (or length: from 0 either way)
        let entry = *(*jb).root.children.as_ptr().cast::<u32>();
        let data = std::slice::from_raw_parts(root.add(8), total.checked_sub(12)?);
        let end = (entry & JENTRY_OFFLENMASK) as usize;
        Some((entry & JENTRY_TYPEMASK, data.get(..end)?))
    }
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
/// same key of `base`), and the result is written straight in jsonb's binary form, each value
/// copied as it is stored (see [`merge_stored`]). Anything but two objects goes through the
/// operators instead.
///
/// # Safety
/// The datums are non-null values of the types named (see the module comment).
pub unsafe fn merge_objects(base: Datum, over: Datum, skip: Option<&str>) -> Datum {
    unsafe { merge_objects_telling(base, over, skip).0 }
}

/// What a merge tells of its result against `base`.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Sameness {
    /// byte for byte the same pairs
    Same,
    /// a key added, or a string, boolean or null value (or a value's type) changed
    Differs,
    /// only numbers or nested values stored differently: equal or not as jsonb compares them
    /// (`1.0` = `1`), which only [`differ`] tells
    Unknown,
}

impl Sameness {
    /// Whether `result` differs from `base` as jsonb compares them, asking [`differ`] only
    /// when the merge could not tell.
    ///
    /// # Safety
    /// Two jsonb datums: the merge's result and its base.
    pub unsafe fn differs(self, result: Datum, base: Datum) -> bool {
        match self {
            Sameness::Same => false,
            Sameness::Differs => true,
            Sameness::Unknown => unsafe { differ(result, base) },
        }
    }
}

/// [`merge_objects`], also telling whether the result differs from `base`.
///
/// # Safety
/// As [`merge_objects`].
pub unsafe fn merge_objects_telling(base: Datum, over: Datum, skip: Option<&str>) -> (Datum, Sameness) {
    unsafe {
        let a = pg_sys::pg_detoast_datum(base.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let b = pg_sys::pg_detoast_datum(over.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        if let (Some(left), Some(right)) = (Stored::object(a), Stored::object(b)) {
            if let Some(merged) = merge_stored(&left, &right, skip.map(str::as_bytes)) {
                return merged;
            }
        }
        let over = match skip.and_then(|key| key.into_datum()) {
            Some(key) => delete_key(over, key),
            None => over,
        };
        (concat(base, over), Sameness::Unknown)
    }
}

// jsonb's binary format (utils/jsonb.h): a container is a header word (pair count, kind
// flags) and a JEntry word per key, then per value, then the keys' and values' bytes in that
// order. A JEntry holds the item's type and its length, or, every JB_OFFSET_STRIDE-th, its end
// offset (JENTRY_HAS_OFF). Numbers and nested containers start 4-byte aligned (the padding
// before them counts in their length); alignment is relative to the varlena's start, and a
// container's data area always starts aligned.
const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FSCALAR: u32 = 0x1000_0000;
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;
const JB_OFFSET_STRIDE: usize = 32;

/// A jsonb object's top-level pairs as stored: per pair the key's bytes, the value's JEntry
/// type and the value's bytes (without alignment padding).
struct Stored<'a> {
    pairs: Vec<(&'a [u8], u32, &'a [u8])>,
}

impl<'a> Stored<'a> {
    /// # Safety
    /// `jb` is a detoasted jsonb (4-byte varlena header) that outlives the result.
    unsafe fn object(jb: *const pg_sys::Jsonb) -> Option<Stored<'a>> {
        unsafe {
            let header = (*jb).root.header;
            if header & JB_FOBJECT == 0 || header & JB_FSCALAR != 0 {
                return None;
            }
            let n = (header & JB_CMASK) as usize;
            let entries = std::slice::from_raw_parts((*jb).root.children.as_ptr().cast::<u32>(), 2 * n);
            let start = entries.as_ptr().add(2 * n).cast::<u8>();
            let total = pgrx::varlena::varsize_any(jb.cast::<pg_sys::varlena>());
            let used = start.offset_from(jb.cast::<u8>()) as usize;
            let data = std::slice::from_raw_parts(start, total.checked_sub(used)?);
            // each item's [offset, end) in `data`
            let mut spans = Vec::with_capacity(2 * n);
            let mut offset = 0usize;
            for entry in entries {
                let field = (entry & JENTRY_OFFLENMASK) as usize;
                let end = if entry & JENTRY_HAS_OFF != 0 { field } else { offset + field };
                if end < offset || end > data.len() {
                    return None;
                }
                spans.push((entry & JENTRY_TYPEMASK, offset, end));
                offset = end;
            }
            let pairs = (0..n)
                .map(|i| {
                    let (_, key_from, key_to) = spans[i];
                    let (kind, mut from, to) = spans[n + i];
                    if kind == JENTRY_ISNUMERIC || kind == JENTRY_ISCONTAINER {
                        from = (from + 3) & !3; // INTALIGN: skip the padding
                    }
                    (&data[key_from..key_to], kind, &data[from.min(to)..to])
                })
                .collect();
            Some(Stored { pairs })
        }
    }
}

/// `left || (right - skip)` written as jsonb: the pairs of both in key order, `right`'s value
/// for a key both have. `None` when the result would be too large for jsonb (the operators
/// then raise the error Postgres gives).
fn merge_stored(left: &Stored<'_>, right: &Stored<'_>, skip: Option<&[u8]>) -> Option<(Datum, Sameness)> {
    let mut pairs: Vec<(&[u8], u32, &[u8])> = Vec::with_capacity(left.pairs.len() + right.pairs.len());
    let mut sameness = Sameness::Same;
    let (mut l, mut r) = (left.pairs.iter().peekable(), right.pairs.iter().filter(|p| Some(p.0) != skip).peekable());
    loop {
        let ord = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => key_order(a.0, b.0),
        };
        match ord {
            std::cmp::Ordering::Less => pairs.extend(l.next().copied()),
            std::cmp::Ordering::Greater => {
                sameness = Sameness::Differs; // a key `left` does not have
                pairs.extend(r.next().copied());
            }
            std::cmp::Ordering::Equal => {
                let (old, new) = (l.next()?, r.next()?);
                if (old.1, old.2) != (new.1, new.2) {
                    let stored_apart = old.1 == new.1 && (old.1 == JENTRY_ISNUMERIC || old.1 == JENTRY_ISCONTAINER);
                    if !stored_apart {
                        sameness = Sameness::Differs;
                    } else if sameness == Sameness::Same {
                        sameness = Sameness::Unknown;
                    }
                }
                pairs.push(*new);
            }
        }
    }
    let count = pairs.len();
    let data_len: usize = pairs.iter().map(|p| p.0.len() + p.2.len() + 3).sum();
    let mut buf: Vec<u8> = Vec::with_capacity(8 + 8 * count + data_len);
    buf.extend_from_slice(&[0; 4]); // the varlena header, set below
    buf.extend_from_slice(&(count as u32 | JB_FOBJECT).to_ne_bytes());
    buf.resize(8 + 8 * count, 0);
    let base = buf.len();
    let mut entries = Vec::with_capacity(2 * count);
    for (i, (key, _, _)) in pairs.iter().enumerate() {
        buf.extend_from_slice(key);
        entries.push((i, JENTRY_ISSTRING, key.len()));
    }
    for (i, (_, kind, value)) in pairs.iter().enumerate() {
        let mut len = value.len();
        if *kind == JENTRY_ISNUMERIC || *kind == JENTRY_ISCONTAINER {
            let pad = (4 - buf.len() % 4) % 4;
            buf.resize(buf.len() + pad, 0);
            len += pad;
        }
        buf.extend_from_slice(value);
        entries.push((count + i, *kind, len));
    }
    if buf.len() - base > JENTRY_OFFLENMASK as usize {
        return None;
    }
    let mut end = 0usize;
    for (index, kind, len) in entries {
        end += len;
        let entry = if index % JB_OFFSET_STRIDE == 0 { kind | end as u32 | JENTRY_HAS_OFF } else { kind | len as u32 };
        buf[8 + 4 * index..12 + 4 * index].copy_from_slice(&entry.to_ne_bytes());
    }
    // SAFETY: a palloc'd copy of the bytes built, its 4-byte varlena header set to their length.
    unsafe {
        let out = pg_sys::palloc(buf.len()).cast::<u8>();
        std::ptr::copy_nonoverlapping(buf.as_ptr(), out, buf.len());
        pgrx::varlena::set_varsize_4b(out.cast(), buf.len() as i32);
        Some((Datum::from(out), sameness))
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
