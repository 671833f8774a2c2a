//! `RawJsonb`: a jsonb value kept as the Postgres datum. pgrx's `JsonB` prints every value to
//! text and parses it with serde (and back again when passed to SPI); on the write path the
//! value only travels from the caller into the INSERT, so it stays a datum. Convert with
//! [`RawJsonb::to_value`] where Rust needs to look inside.
//!
//! What eventic can hold: serde_json keeps numbers as their text (`arbitrary_precision`), so
//! `1e400` round-trips exactly; it refuses nesting deeper than [`MAX_DEPTH`] (its recursion
//! limit, which keeps the parser off the end of the stack). Every jsonb that enters eventic
//! (arguments, documents, messages, step results, rows read back) is converted here, so a
//! document too deep for it is refused at the door with 22023 instead of failing later, with
//! XX000, in every function that reads it (pgrx's `JsonB` panics).

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, IntoDatum};
use serde_json::Value;

use crate::errors::{EventicError, Result};

/// How deeply eventic's JSON may nest: serde_json's recursion limit (128) refuses 128 levels.
pub const MAX_DEPTH: usize = 127;

/// A jsonb datum smaller than this cannot nest deeper than [`MAX_DEPTH`] (8 bytes less per
/// level it sits below the top of what is stored): every level costs a container header and
/// the parent's entry for it, 8 bytes (and numbers are held at any size), so small values
/// need no parse to be known holdable.
const SURELY_HOLDABLE_BYTES: usize = 8 * MAX_DEPTH;

#[derive(Clone, Copy)]
pub struct RawJsonb(pg_sys::Datum);

impl RawJsonb {
    fn text(self) -> String {
        // SAFETY: the datum is a non-null jsonb (an argument, or a row still in SPI memory).
        unsafe { pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(self.0)]) }
            .map(|cstr| cstr.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The value as serde JSON (one text round trip); 22023 for JSON eventic cannot hold.
    pub fn to_value(self) -> Result<Value> {
        parse(&self.text())
    }

    /// 22023 unless eventic can hold the value where it will sit: `levels_above` levels down
    /// in what is stored (0: stored whole; a record's field: 1; a property's value: 2).
    /// Parses only values large enough to nest too deeply (the write paths pass small values
    /// on without a parse).
    pub fn check_holdable_at(self, levels_above: usize) -> Result<()> {
        // SAFETY: a non-null jsonb datum; reads its (uncompressed) size from the header.
        let size = unsafe { pg_sys::toast_raw_datum_size(self.0) };
        if size < SURELY_HOLDABLE_BYTES.saturating_sub(8 * levels_above) {
            return Ok(());
        }
        let (open, close) = ("[".repeat(levels_above), "]".repeat(levels_above));
        parse(&format!("{open}{}{close}", self.text())).map(|_| ())
    }
}

/// Parse JSON text as eventic holds it (22023 when it cannot).
fn parse(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|err| {
        if err.to_string().contains("recursion limit") {
            EventicError::invalid(
                format!("JSON nested deeper than {MAX_DEPTH} levels cannot be stored by eventic"),
                format!("Keep documents, arguments and messages within {MAX_DEPTH} levels of arrays and objects, counted from the document (a record's field within {}, a property's value within {}), or store the deep part as text.", MAX_DEPTH - 1, MAX_DEPTH - 2),
            )
        } else {
            EventicError::invalid(
                format!("JSON eventic cannot hold: {err}"),
                "Pass a JSON value of plain objects, arrays, strings, numbers, booleans and null.",
            )
        }
    })
}

/// Read a jsonb column of an SPI row as serde JSON (22023 for JSON eventic cannot hold).
pub fn column(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> Result<Option<Value>> {
    row.get::<RawJsonb>(ordinal)?.map(RawJsonb::to_value).transpose()
}

impl RawJsonb {
    /// A jsonb datum (non-null) as a RawJsonb.
    pub fn from_raw(datum: pg_sys::Datum) -> Self {
        RawJsonb(datum)
    }

    /// The datum itself.
    pub fn datum(self) -> pg_sys::Datum {
        self.0
    }

    /// Copy a value read through SPI out of SPI's memory into the caller's, so it outlives
    /// `SPI_finish` (call while still connected).
    pub fn transfer_out_of_spi(self) -> Self {
        // SAFETY: a valid varlena datum; SPI is connected (SPI_datumTransfer requires it).
        RawJsonb(unsafe { pg_sys::SPI_datumTransfer(self.0, false, -1) })
    }
}

unsafe impl BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(RawJsonb(datum))
    }
}

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: a jsonb datum is a pointer to a varlena, kept as it is.
unsafe impl pgrx::datum::UnboxDatum for RawJsonb {
    type As<'src> = RawJsonb;
    unsafe fn unbox<'src>(datum: pgrx::datum::Datum<'src>) -> Self::As<'src>
    where
        Self: 'src,
    {
        RawJsonb(datum.sans_lifetime())
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for RawJsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

unsafe impl SqlTranslatable for RawJsonb {
    const TYPE_IDENT: &'static str = "eventic::raw_jsonb::RawJsonb";
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: std::result::Result<SqlMappingRef, ArgumentError> =
        Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: std::result::Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}
