//! eventic's own heavyweight locks, in the advisory lock space (`locktag_field4` tells them
//! apart from the advisory locks of users, whose field4 is 1 or 2): registering a class, the
//! slots of a queue's workers, and the short write lock of a record (records::direct).

use pgrx::pg_sys;

/// `locktag_field4` of the lock that serialises registering one class.
const CLASS_LOCK_SPACE: u16 = 0x4563;

/// Block until this transaction holds the registration lock of class `name`.
pub fn lock_class(name: &str) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    let hash = hasher.finish();
    acquire(&locktag(CLASS_LOCK_SPACE, (hash >> 32) as u32, hash as u32), false);
}

/// `locktag_field4` of the locks that count how many workers drain one queue at once.
const QUEUE_SLOT_SPACE: u16 = 0x4571;

/// Try to take slot `slot` of queue `name` for this transaction (one of its `concurrency`
/// slots); false when another worker holds it.
pub fn try_lock_queue_slot(name: &str, slot: u32) -> bool {
    acquire(&queue_slot_tag(name, slot), true)
}

/// Give back a slot taken by [`try_lock_queue_slot`] in the current (sub)transaction before
/// it ends.
pub fn unlock_queue_slot(name: &str, slot: u32) {
    release(&queue_slot_tag(name, slot));
}

fn queue_slot_tag(name: &str, slot: u32) -> pg_sys::LOCKTAG {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    locktag(QUEUE_SLOT_SPACE, hasher.finish() as u32, slot)
}

/// `locktag_field4` of the short per-record write lock (records::direct).
const RECORD_SPACE: u16 = 0x4572;

fn locktag(space: u16, high: u32, low: u32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the whole life of a backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: high,
        locktag_field3: low,
        locktag_field4: space,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Take `tag` exclusively for this transaction (waiting, unless `dont_wait`); false when
/// `dont_wait` and another transaction holds it. Released at commit or abort, or by
/// [`release`]; deadlocks are found by the deadlock detector like any heavyweight lock.
fn acquire(tag: &pg_sys::LOCKTAG, dont_wait: bool) -> bool {
    // SAFETY: a valid LOCKTAG; a transaction-level (not session) lock.
    let result = unsafe { pg_sys::LockAcquire(tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, dont_wait) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Give back a lock taken by [`acquire`] before the (sub)transaction ends.
fn release(tag: &pg_sys::LOCKTAG) {
    // SAFETY: a valid LOCKTAG; releasing a lock this resource owner holds (or a no-op warning)
    unsafe {
        pg_sys::LockRelease(tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false);
    }
}

/// The short write lock of one record (records::direct): held from reading its latest version
/// until the next version is in the heap and the index, never across a wait for another
/// transaction; given back when dropped.
pub struct RecordLock(pg_sys::LOCKTAG);

impl RecordLock {
    pub fn take(id: &pgrx::Uuid) -> Self {
        let b = id.as_bytes();
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let tag = locktag(RECORD_SPACE, word(0) ^ word(8), word(4) ^ word(12));
        acquire(&tag, false);
        RecordLock(tag)
    }
}

impl Drop for RecordLock {
    fn drop(&mut self) {
        // an ERROR unwinding through here: the abort releases the lock
        if !std::thread::panicking() {
            release(&self.0);
        }
    }
}
