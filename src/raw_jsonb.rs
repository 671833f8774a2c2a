//! `RawJsonb`: a jsonb value kept as the Postgres datum. pgrx's `JsonB` prints every value to
//! text and parses it with serde (and back again when passed to SPI); on the write path the
//! value only travels from the caller into the INSERT, so it stays a datum. Convert with
//! [`RawJsonb::to_value`] where Rust needs to look inside.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, IntoDatum, JsonB};
use serde_json::Value;

#[derive(Clone, Copy)]
pub struct RawJsonb(pg_sys::Datum);

impl RawJsonb {
    /// The value as serde JSON (one text round trip).
    pub fn to_value(self) -> Value {
        // SAFETY: the datum is a non-null jsonb from an argument, valid for this call.
        unsafe { JsonB::from_datum(self.0, false) }
            .map(|j| j.0)
            .unwrap_or(Value::Null)
    }
}

impl RawJsonb {
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
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}
