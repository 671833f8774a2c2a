//! Workflow evolution: `eventic.patched(name)`, for a body replaced (CREATE OR REPLACE) while
//! workflows of it are in flight. Their records are positional: a replay of the new body
//! must ask for the steps the old body recorded, in the same order. A change goes in as
//!
//! ```sql
//! IF eventic.patched('charge-v2') THEN <new steps> ELSE <old steps> END IF;
//! ```
//!
//! `patched` is true for a run that reaches that point for the first time (a new run, or an
//! old one that had not got that far): it records a marker (kind `patch`) like a step, and
//! replays find it there. It is false for a run that passed that point before the patch
//! existed: its record at that position is an old step, which the `ELSE` branch asks for
//! next; nothing is recorded, so its later replays answer false again. Once no such run is
//! left, the patch is retired by removing the call and the old branch: replays step over
//! markers nobody asks for ([`super::body`]'s `next_record`), as Temporal's deprecatePatch
//! and DBOS's deprecate_patch do.

use pgrx::prelude::*;
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};

use super::body::outside_workflow;
use super::{StepRecord, CONTEXT};

/// The kind of a patch marker's record.
pub(super) const KIND: &str = "patch";

/// Inside a body: true if this run reaches this point for the first time since the patch
/// `name` exists (recorded), false if it passed it before (see the module comment).
#[pg_extern(volatile, parallel_unsafe)]
fn patched(name: Option<&str>) -> bool {
    (|| -> Result<bool> {
        let name = required(name, "name")?;
        if name.is_empty() {
            return Err(EventicError::invalid(
                "a patch name must not be empty",
                "Name the change, e.g. eventic.patched('charge-v2').",
            ));
        }
        CONTEXT.with(|ctx| {
            let mut ctx = ctx.borrow_mut();
            let ctx = ctx
                .as_mut()
                .ok_or_else(|| outside_workflow("eventic.patched"))?;
            // markers of other patches here are retired ones (or ones the body asks for after
            // this one): look past them for this one
            let mut at = ctx.position;
            loop {
                match ctx.records.get(at) {
                    Some(record) if record.kind == KIND && record.name == name => {
                        ctx.position = at + 1;
                        return Ok(true);
                    }
                    Some(record) if record.kind == KIND => at += 1,
                    // an old step: this run passed here before the patch
                    Some(_) => return Ok(false),
                    None => break,
                }
            }
            let record = StepRecord {
                name: name.to_string(),
                kind: KIND.to_string(),
                output: Some(Value::Bool(true)),
                error: None,
                attempts: 1,
            };
            ctx.records.push(record.clone());
            ctx.new_values.push((at, record));
            ctx.position = at + 1;
            Ok(true)
        })
    })()
    .or_report()
}
