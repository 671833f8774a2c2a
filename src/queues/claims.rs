//! Jobs that kill the process running them: noted before they run, so that they can be
//! counted before they do it again (the counting is the drain's, `drain::recover_dead_workers`).
//!
//! A drain's jobs commit or roll back with its transaction, so a job whose backend dies
//! (a segfault, the OOM killer, `pg_terminate_backend`) leaves no trace in its queue: without
//! this it would be claimed again forever, each time taking the worker (or, for a crash, the
//! whole cluster through crash recovery) down with it. So before a worker runs a unit of
//! jobs (a group run as one statement, or one job) it notes their ids in a small file of its
//! own, `pg_stat_tmp/eventic_claims.<database>.<pid>`, through a shared memory map (a memory
//! store, no system call per unit), and clears the note when the unit returns. The note
//! survives the process (the page cache keeps it; the file is outside WAL and not fsynced:
//! after an OS crash an attempt may go uncounted). Each worker looks for notes of dead
//! workers of its database when it starts draining and every few seconds after: a dead
//! worker's single job gets an attempt counted (and is dead after max_attempts, like any
//! failing job); the jobs of a dead worker's group get an attempt each, which also makes
//! them run one by one from then on (jobs that have failed before are never grouped), so
//! the guilty one is found next time.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use pgrx::{pg_sys, register_xact_callback, PgXactCallbackEvent};

use crate::errors::Result;

const DIRECTORY: &str = "pg_stat_tmp";
const PREFIX: &str = "eventic_claims.";
/// How often a worker looks for the notes of dead workers.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// The note: magic, job count, queue name (64 bytes), then the job ids.
const MAGIC: u32 = 0x6576_6301;
const QUEUE_BYTES: usize = 64;
const HEADER: usize = 8 + QUEUE_BYTES;
const MAX_JOBS: usize = crate::queues::CLAIM_BATCH as usize;
const FILE_BYTES: usize = HEADER + 8 * MAX_JOBS;

/// This worker's note, mapped.
struct Note {
    map: *mut u8,
}

thread_local! {
    static NOTE: RefCell<Option<Note>> = const { RefCell::new(None) };
    static IS_WORKER: Cell<Option<bool>> = const { Cell::new(None) };
    static LAST_RECOVERY: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Whether this process is an eventic worker (sessions running eventic.run_pending take
/// their own risks: a job that kills a session is seen by whoever runs it).
fn is_worker() -> bool {
    IS_WORKER.with(|cached| {
        if let Some(known) = cached.get() {
            return known;
        }
        // SAFETY: MyBgworkerEntry is this process's own registration, or null.
        let known = unsafe {
            let entry = pg_sys::MyBgworkerEntry;
            !entry.is_null()
                && std::ffi::CStr::from_ptr((*entry).bgw_type.as_ptr()).to_bytes()
                    == b"eventic worker"
        };
        cached.set(Some(known));
        known
    })
}

fn database_oid() -> u32 {
    // SAFETY: a plain read of this backend's database.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn note_path(pid: i32) -> String {
    format!("{DIRECTORY}/{PREFIX}{}.{pid}", database_oid())
}

fn open_note() -> Option<Note> {
    // SAFETY: MyProcPid is this process's pid.
    let path = std::ffi::CString::new(note_path(unsafe { pg_sys::MyProcPid })).ok()?;
    // SAFETY: plain file and mapping calls on a file of this process; the mapping lives as
    // long as the process.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o600);
        if fd < 0 {
            return None;
        }
        let sized = libc::ftruncate(fd, FILE_BYTES as libc::off_t) == 0;
        let map = if sized {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        } else {
            libc::MAP_FAILED
        };
        libc::close(fd);
        if map == libc::MAP_FAILED {
            pgrx::warning!("eventic: cannot keep a note of running jobs in {DIRECTORY}: jobs that kill their process will not be counted");
            return None;
        }
        Some(Note { map: map.cast() })
    }
}

/// Note that the worker is about to run `job_ids` of `queue_name` (a no-op outside workers).
pub fn running(queue_name: &str, job_ids: &[i64]) {
    if !is_worker() || job_ids.len() > MAX_JOBS {
        return;
    }
    NOTE.with(|note| {
        let mut note = note.borrow_mut();
        if note.is_none() {
            *note = open_note();
        }
        let Some(note) = note.as_ref() else { return };
        // SAFETY: the mapping is FILE_BYTES long; the count is written last (and cleared
        // first), so a note cut short by a death in between reads as empty.
        unsafe {
            let count = note.map.add(4).cast::<u32>();
            std::ptr::write_volatile(count, 0);
            std::ptr::write_volatile(note.map.cast::<u32>(), MAGIC);
            let name = queue_name.as_bytes();
            let len = name.len().min(QUEUE_BYTES - 1);
            std::ptr::write_bytes(note.map.add(8), 0, QUEUE_BYTES);
            std::ptr::copy_nonoverlapping(name.as_ptr(), note.map.add(8), len);
            std::ptr::copy_nonoverlapping(
                job_ids.as_ptr().cast::<u8>(),
                note.map.add(HEADER),
                8 * job_ids.len(),
            );
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            std::ptr::write_volatile(count, job_ids.len() as u32);
        }
    });
}

/// The unit noted by [`running`] returned (whether its jobs succeeded or failed).
pub fn done() {
    NOTE.with(|note| {
        if let Some(note) = note.borrow().as_ref() {
            // SAFETY: within the mapping.
            unsafe { std::ptr::write_volatile(note.map.add(4).cast::<u32>(), 0) };
        }
    });
}

/// A dead worker's note: its queue and the jobs it was running.
fn read_note(path: &str) -> Option<(String, Vec<i64>)> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < HEADER || u32::from_ne_bytes(bytes[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let count = u32::from_ne_bytes(bytes[4..8].try_into().ok()?) as usize;
    if count == 0 || count > MAX_JOBS || bytes.len() < HEADER + 8 * count {
        return None;
    }
    let name = &bytes[8..8 + QUEUE_BYTES];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0)?]).into_owned();
    let ids = bytes[HEADER..HEADER + 8 * count]
        .chunks_exact(8)
        .filter_map(|chunk| Some(i64::from_ne_bytes(chunk.try_into().ok()?)))
        .collect();
    Some((name, ids))
}

/// Whether `pid` is a live eventic worker (the note's owner still running).
fn alive(pid: i32) -> Result<bool> {
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return Ok(false);
    }
    Ok(crate::spi_plans::kept_value::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity
                         WHERE pid = $1 AND backend_type = 'eventic worker')",
        &[pid.into()],
    )?
    .unwrap_or(false))
}

/// What a dead worker of this database was running when it died.
pub struct DeadWorkerNote {
    pub pid: i32,
    pub queue_name: String,
    pub job_ids: Vec<i64>,
}

/// The notes of dead workers of this database (see the module comment), taken by this
/// worker: given back if its transaction rolls back, removed when it commits. At most every
/// few seconds, and only in workers (elsewhere: none).
pub fn take_dead_workers_notes() -> Result<Vec<DeadWorkerNote>> {
    if !is_worker() {
        return Ok(Vec::new());
    }
    let due = LAST_RECOVERY.with(|last| match last.get() {
        Some(at) if at.elapsed() < RECOVERY_INTERVAL => false,
        _ => {
            last.set(Some(Instant::now()));
            true
        }
    });
    if !due {
        return Ok(Vec::new());
    }
    let mine = format!("{PREFIX}{}.", database_oid());
    let Ok(entries) = std::fs::read_dir(DIRECTORY) else {
        return Ok(Vec::new());
    };
    // SAFETY: MyProcPid is this process's pid.
    let my_pid = unsafe { pg_sys::MyProcPid };
    let mut notes = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&mine).and_then(|pid| pid.parse::<i32>().ok()) else {
            continue;
        };
        if pid == my_pid || alive(pid)? {
            continue;
        }
        // take the note (one worker does: the rename), give it back if this transaction
        // rolls back, remove it when it commits
        let path = format!("{DIRECTORY}/{file}");
        let taken = format!("{path}.taken.{my_pid}");
        if std::fs::rename(&path, &taken).is_err() {
            continue;
        }
        let note = read_note(&taken);
        {
            let (taken, path) = (taken.clone(), path.clone());
            register_xact_callback(PgXactCallbackEvent::Abort, move || {
                let _ = std::fs::rename(&taken, &path);
            });
        }
        register_xact_callback(PgXactCallbackEvent::Commit, move || {
            let _ = std::fs::remove_file(&taken);
        });
        if let Some((queue_name, job_ids)) = note {
            notes.push(DeadWorkerNote { pid, queue_name, job_ids });
        }
    }
    Ok(notes)
}
