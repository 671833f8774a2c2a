//! Progress and heartbeats of running jobs and workflow steps: `eventic.set_progress(jsonb)`,
//! read by other sessions through the view `eventic.progress`.
//!
//! A job runs inside its worker's open transaction, so a row it updates is invisible to
//! everyone else until the whole batch commits: too late for progress. An autonomous write
//! (dblink, a second connection) would cost a connection and a commit per call. Instead a job
//! that reports progress takes a slot in shared memory (claimed with its process's pid) and
//! writes there: no transaction, no WAL, no lock, seen at once by every session. The slot says
//! whose job it is (queue and job id, workflow and step, the role it runs as) and is given
//! back when the job or step returns (or its transaction aborts, or its process exits);
//! progress is not durable (a restart forgets it, and the finished job keeps none of it).
//! Writes go through a sequence counter (odd while writing) that readers check, so a reader
//! never sees half of a write.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{register_xact_callback, PgAtomic, PgXactCallbackEvent};
use serde_json::{json, Value};

use crate::errors::{required, EventicError, OrReport, Result};
use crate::raw_jsonb::RawJsonb;

/// Jobs and steps whose progress shows at once (a slot is held from a job's first
/// set_progress until it returns).
pub const SLOTS: usize = 1024;
/// A slot's text (what runs and its progress, as JSON): this many bytes at most.
const TEXT_BYTES: usize = 1024;
const WORDS: usize = TEXT_BYTES / 8;

pub struct Slot {
    /// The owning process, 0 for a free slot.
    pid: AtomicI32,
    database: AtomicU32,
    /// The role the job runs as; 0 while the slot shows nothing.
    role: AtomicU32,
    /// Odd while a write is under way.
    seq: AtomicU64,
    len: AtomicU32,
    started_at: AtomicI64,
    updated_at: AtomicI64,
    text: [AtomicU64; WORDS],
}

impl Slot {
    const fn new() -> Self {
        Self {
            pid: AtomicI32::new(0),
            database: AtomicU32::new(0),
            role: AtomicU32::new(0),
            seq: AtomicU64::new(0),
            len: AtomicU32::new(0),
            started_at: AtomicI64::new(0),
            updated_at: AtomicI64::new(0),
            text: [const { AtomicU64::new(0) }; WORDS],
        }
    }
}

pub struct Slots {
    slots: [Slot; SLOTS],
}

// SAFETY: only atomics, valid in any process that maps the segment.
unsafe impl PGRXSharedMemory for Slots {}

impl Default for Slots {
    fn default() -> Self {
        Self {
            slots: [const { Slot::new() }; SLOTS],
        }
    }
}

// SAFETY: the only shared memory of that name.
static PROGRESS: PgAtomic<Slots> = unsafe { PgAtomic::new(c"eventic_progress") };

/// Called from `_PG_init` in the postmaster (preloaded only).
pub fn init() {
    pgrx::pg_shmem_init!(PROGRESS = Slots::default());
}

/// What this process is running: a job (or a group of jobs run as one statement), and
/// inside a workflow job the step being run.
#[derive(Clone)]
struct Running {
    queue: String,
    job_ids: Vec<i64>,
    fn_oid: pg_sys::Oid,
    role: pg_sys::Oid,
    started_at: i64,
    step: Option<Step>,
}

#[derive(Clone)]
struct Step {
    workflow_id: String,
    position: usize,
    name: String,
    started_at: i64,
}

thread_local! {
    static RUNNING: RefCell<Option<Running>> = const { RefCell::new(None) };
    /// The slot this process holds while its job shows progress.
    static MY_SLOT: RefCell<Option<usize>> = const { RefCell::new(None) };
    /// The exit callback that gives the slot back is registered.
    static EXIT_HOOKED: RefCell<bool> = const { RefCell::new(false) };
    /// This transaction's abort callback that gives the slot back is registered.
    static ABORT_HOOKED: RefCell<bool> = const { RefCell::new(false) };
    /// Functions that reported progress: their jobs run one by one, never in a group (a
    /// group's progress would belong to no one job).
    static RUN_ALONE: RefCell<HashSet<u32>> = RefCell::new(HashSet::new());
}

/// The workflow whose body runs in this backend, if one does: registered by `_PG_init`
/// (`workflows::current_workflow_id`), so that progress does not import the workflows that
/// report through it.
static WORKFLOW_LOOKUP: OnceLock<fn() -> Option<String>> = OnceLock::new();

/// Called from `_PG_init`: how [`set_progress`] finds the workflow of a running body.
pub fn set_workflow_lookup(lookup: fn() -> Option<String>) {
    let _ = WORKFLOW_LOOKUP.set(lookup);
}

fn now_us() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The drain is about to run `job_ids` of `queue` (one job, or a group) as `role`.
pub fn job_running(queue: &str, job_ids: &[i64], fn_oid: pg_sys::Oid, role: pg_sys::Oid) {
    release_slot();
    RUNNING.with(|running| {
        *running.borrow_mut() = Some(Running {
            queue: queue.to_string(),
            job_ids: job_ids.to_vec(),
            fn_oid,
            role,
            started_at: now_us(),
            step: None,
        })
    });
}

/// The job (or group) noted by [`job_running`] returned.
pub fn job_done() {
    RUNNING.with(|running| running.borrow_mut().take());
    release_slot();
}

/// Run a workflow step (`f`) with its progress shown under the workflow and step.
pub fn in_step<T>(workflow_id: &str, position: usize, name: &str, f: impl FnOnce() -> T) -> T {
    let step = Step {
        workflow_id: workflow_id.to_string(),
        position,
        name: name.to_string(),
        started_at: now_us(),
    };
    let before = RUNNING.with(|running| {
        running
            .borrow_mut()
            .as_mut()
            .map(|running| running.step.replace(step))
    });
    let result = f();
    RUNNING.with(|running| {
        if let (Some(running), Some(before)) = (running.borrow_mut().as_mut(), before) {
            running.step = before;
        }
    });
    release_slot();
    result
}

/// Whether jobs of `fn_oid` must run one by one (they reported progress in this process).
pub fn runs_alone(fn_oid: pg_sys::Oid) -> bool {
    RUN_ALONE.with(|alone| alone.borrow().contains(&fn_oid.to_u32()))
}

/// Give back the slot this process holds, if it holds one (its progress disappears).
fn release_slot() {
    if let Some(index) = MY_SLOT.with(|slot| slot.borrow_mut().take()) {
        let slot = &PROGRESS.get().slots[index];
        slot.seq.fetch_add(1, Ordering::AcqRel);
        slot.role.store(0, Ordering::Relaxed);
        slot.len.store(0, Ordering::Relaxed);
        slot.database.store(0, Ordering::Relaxed);
        slot.seq.fetch_add(1, Ordering::Release);
        slot.pid.store(0, Ordering::Release);
    }
}

unsafe extern "C-unwind" fn release_at_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    release_slot();
}

/// The slot this process holds, or a free one (None when all are taken: the progress is not
/// shown, the job goes on).
fn my_slot() -> Option<usize> {
    if let Some(index) = MY_SLOT.with(|slot| *slot.borrow()) {
        return Some(index);
    }
    // SAFETY: plain reads of this process's pid and database.
    let (pid, database) = unsafe { (pg_sys::MyProcPid, pg_sys::MyDatabaseId.to_u32()) };
    let slots = &PROGRESS.get().slots;
    let index = slots.iter().position(|slot| {
        slot.pid
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })?;
    slots[index].database.store(database, Ordering::Release);
    MY_SLOT.with(|slot| *slot.borrow_mut() = Some(index));
    if !EXIT_HOOKED.with(|hooked| hooked.replace(true)) {
        // SAFETY: registers a callback run when this process exits.
        unsafe { pg_sys::before_shmem_exit(Some(release_at_exit), pg_sys::Datum::from(0)) };
    }
    // a transaction that aborts (an error past the job's own subtransaction, a cancel) ends
    // the job without job_done
    if !ABORT_HOOKED.with(|hooked| hooked.replace(true)) {
        register_xact_callback(PgXactCallbackEvent::Abort, || {
            ABORT_HOOKED.with(|hooked| hooked.replace(false));
            release_slot();
        });
        register_xact_callback(PgXactCallbackEvent::Commit, || {
            ABORT_HOOKED.with(|hooked| hooked.replace(false));
        });
    }
    Some(index)
}

fn outside_a_job() -> EventicError {
    EventicError::NotReady {
        message: "eventic.set_progress can only be called inside a job or a workflow step".into(),
        hint: "Call it from a function run by eventic's worker or eventic.run_pending (a job, a workflow body or one of its steps).".into(),
    }
}

/// Inside a job or a workflow step: show `progress` (any JSON) in `eventic.progress` to
/// other sessions at once, and note the time (a heartbeat). Not transactional: a job that
/// then fails or rolls back still showed it.
#[pg_extern(volatile, parallel_unsafe)]
fn set_progress(progress: Option<RawJsonb>) {
    (|| -> Result<()> {
        let progress = required(progress, "progress")?.to_value()?;
        let running = RUNNING
            .with(|running| running.borrow().clone())
            .ok_or_else(outside_a_job)?;
        if running.job_ids.len() > 1 && running.step.is_none() {
            // a group of jobs run as one statement: its progress would be no one job's. The
            // group fails, and its jobs run again one by one (and from now on, alone)
            RUN_ALONE.with(|alone| alone.borrow_mut().insert(running.fn_oid.to_u32()));
            return Err(EventicError::Internal(
                "eventic.set_progress in a group of jobs: they run again one by one".into(),
            ));
        }
        if !crate::runtime::preloaded() {
            return Err(EventicError::NotReady {
                message: "eventic.set_progress needs eventic in shared_preload_libraries".into(),
                hint: "Add eventic to shared_preload_libraries and restart the server.".into(),
            });
        }
        // a workflow body (not a step) shows its workflow too
        let workflow = WORKFLOW_LOOKUP.get().and_then(|lookup| lookup());
        let (workflow_id, position, step, started_at) = match &running.step {
            Some(step) => (
                Some(step.workflow_id.clone()),
                Some(step.position),
                Some(step.name.clone()),
                step.started_at,
            ),
            None => (workflow, None, None, running.started_at),
        };
        let text = json!({
            "queue_name": running.queue,
            "job_id": running.job_ids.first(),
            "workflow_id": workflow_id,
            "step_position": position,
            "step_name": step,
            "progress": progress,
        })
        .to_string();
        if text.len() > TEXT_BYTES {
            return Err(EventicError::invalid(
                format!(
                    "progress is too large: with its job's names it takes {} bytes, at most {TEXT_BYTES}",
                    text.len()
                ),
                "Report a small summary such as {\"done\": 40, \"total\": 100}.",
            ));
        }
        let Some(index) = my_slot() else {
            return Ok(());
        };
        let slot = &PROGRESS.get().slots[index];
        let mut words = [0u64; WORDS];
        for (i, chunk) in text.as_bytes().chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            words[i] = u64::from_ne_bytes(word);
        }
        slot.seq.fetch_add(1, Ordering::AcqRel);
        for (cell, word) in slot.text.iter().zip(words).take(text.len().div_ceil(8)) {
            cell.store(word, Ordering::Relaxed);
        }
        slot.len.store(text.len() as u32, Ordering::Relaxed);
        slot.role.store(running.role.to_u32(), Ordering::Relaxed);
        slot.started_at.store(started_at, Ordering::Relaxed);
        slot.updated_at.store(now_us(), Ordering::Relaxed);
        slot.seq.fetch_add(1, Ordering::Release);
        Ok(())
    })()
    .or_report()
}

/// One slot's content, read consistently (None: empty, or still changing after a few tries).
fn read_slot(slot: &Slot) -> Option<(i32, u32, String, i64, i64)> {
    for _ in 0..100 {
        let before = slot.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let pid = slot.pid.load(Ordering::Relaxed);
        let role = slot.role.load(Ordering::Relaxed);
        let len = (slot.len.load(Ordering::Relaxed) as usize).min(TEXT_BYTES);
        let mut bytes = Vec::with_capacity(len.div_ceil(8) * 8);
        for cell in slot.text.iter().take(len.div_ceil(8)) {
            bytes.extend_from_slice(&cell.load(Ordering::Relaxed).to_ne_bytes());
        }
        bytes.truncate(len);
        let (started, updated) = (
            slot.started_at.load(Ordering::Relaxed),
            slot.updated_at.load(Ordering::Relaxed),
        );
        std::sync::atomic::fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != before {
            continue;
        }
        if pid == 0 || role == 0 || len == 0 {
            return None;
        }
        return Some((pid, role, String::from_utf8(bytes).ok()?, started, updated));
    }
    None
}

/// What the view `eventic.progress` shows: the progress in this database's slots of the
/// jobs that run as a role the caller has the privileges of (all for superusers).
#[allow(clippy::type_complexity)] // pgrx's named output columns
#[pg_extern(volatile, parallel_unsafe)]
fn progress_rows() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(role, pg_sys::Oid),
        name!(detail, pgrx::JsonB),
        name!(started_us, i64),
        name!(updated_us, i64),
    ),
> {
    if !crate::runtime::preloaded() {
        return TableIterator::new(Vec::new());
    }
    // SAFETY: a plain read of this backend's database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let rows: Vec<_> = PROGRESS
        .get()
        .slots
        .iter()
        .filter(|slot| slot.database.load(Ordering::Acquire) == database)
        .filter_map(read_slot)
        .filter(|(_, role, ..)| crate::roles::may_manage(pg_sys::Oid::from(*role)))
        .filter_map(|(pid, role, text, started, updated)| {
            let detail: Value = serde_json::from_str(&text).ok()?;
            Some((
                pid,
                pg_sys::Oid::from(role),
                pgrx::JsonB(detail),
                started,
                updated,
            ))
        })
        .collect();
    TableIterator::new(rows)
}
