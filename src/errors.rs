//! Every error a user can cause, with its SQLSTATE, message, DETAIL and HINT (DESIGN.md §5).
//!
//! Functions return `Result<T, EventicError>`; `report()` turns the error into a Postgres
//! ERROR. Nothing here panics on user input, and no error reaches the client as `XX000`
//! unless it really is an internal fault.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub type Result<T> = std::result::Result<T, EventicError>;

/// Where a document breaks its class's JSON Schema (the details of a 23514).
#[derive(Debug)]
pub struct SchemaViolation {
    pub id: String,
    pub class: String,
    pub pointer: String,
    pub rule: String,
    pub message: String,
    pub schema_path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EventicError {
    /// P0002: no version row has this id.
    #[error("record {id} does not exist")]
    RecordNotFound { id: String },

    /// P0002: the record exists, the asked-for version does not (or was pruned).
    #[error("record {id} has no version {version}")]
    VersionNotFound {
        id: String,
        version: i32,
        latest: i32,
    },

    /// P0002: the record's latest version is a tombstone.
    #[error("record {id} was deleted at version {version}")]
    RecordDeleted { id: String, version: i32 },

    /// P0002: `hydrate_as_of` before the record was created.
    #[error("record {id} did not exist yet at {at}")]
    NotYetCreated {
        id: String,
        at: String,
        created_at: String,
    },

    /// P0002: no such job in that queue (or not in the state the call needs).
    #[error("job {job_id} of queue {queue} does not exist or is not in a state for this call")]
    JobNotFound { queue: String, job_id: i64 },

    /// P0002: no workflow with that id.
    #[error("workflow {id} does not exist")]
    WorkflowNotFound { id: String },

    /// 40001: optimistic concurrency check failed.
    #[error("record {id} is at version {actual}, not at the expected version {expected}")]
    StaleVersion {
        id: String,
        expected: i32,
        actual: i32,
    },

    /// 23505: `create` with an id that is taken.
    #[error("record {id} already exists")]
    RecordExists { id: String },

    /// 23514: a new version does not match its class's JSON Schema.
    /// (boxed: the largest variant would make every `Result` of the crate this large)
    #[error("record {} does not match the JSON Schema of class {} at {}", .0.id, .0.class, .0.pointer)]
    SchemaViolation(Box<SchemaViolation>),

    /// 42704: no class / queue of that name.
    #[error("{what} {name:?} does not exist")]
    UnknownObject {
        what: &'static str,
        name: String,
        hint: String,
    },

    /// 42710: a queue (or other object) of that name exists already.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        what: &'static str,
        name: String,
        hint: String,
    },

    /// 22023: a bad argument; `hint` says what would be accepted.
    #[error("{message}")]
    InvalidArgument { message: String, hint: String },

    /// 42501: the caller may not do this; `hint` names the allowed way.
    #[error("{message}")]
    NotAllowed { message: String, hint: String },

    /// 55000: not possible in this state (e.g. waiting for what this transaction holds back).
    #[error("{message}")]
    NotReady { message: String, hint: String },

    /// XX000: an SPI call failed in a way the user cannot cause.
    #[error("internal error in eventic: {0}")]
    Internal(String),
}

impl From<pgrx::spi::SpiError> for EventicError {
    fn from(err: pgrx::spi::SpiError) -> Self {
        EventicError::Internal(err.to_string())
    }
}

impl From<pgrx::datum::TryFromDatumError> for EventicError {
    fn from(err: pgrx::datum::TryFromDatumError) -> Self {
        EventicError::Internal(err.to_string())
    }
}

impl EventicError {
    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        EventicError::InvalidArgument {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// 22023 for a SQL NULL where a value is required (the functions are not STRICT, so that
    /// a NULL is reported instead of silently doing nothing).
    pub fn null_argument(name: &str) -> Self {
        EventicError::invalid(
            format!("{name} must not be null"),
            "Pass a value (a JSON null is 'null'::jsonb, not SQL NULL).",
        )
    }

    pub fn not_allowed(message: impl Into<String>, hint: impl Into<String>) -> Self {
        EventicError::NotAllowed {
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use EventicError::*;
        match self {
            RecordNotFound { .. }
            | VersionNotFound { .. }
            | RecordDeleted { .. }
            | NotYetCreated { .. }
            | JobNotFound { .. }
            | WorkflowNotFound { .. } => PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            StaleVersion { .. } => PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            RecordExists { .. } => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            SchemaViolation(_) => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            UnknownObject { .. } => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            AlreadyExists { .. } => PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            InvalidArgument { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            NotAllowed { .. } => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            NotReady { .. } => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Internal(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    /// The five-character SQLSTATE.
    pub fn sqlstate_text(&self) -> String {
        sqlstate_text(self.sqlstate())
    }

    fn detail(&self) -> Option<String> {
        use EventicError::*;
        match self {
            VersionNotFound { latest, .. } => {
                Some(format!("Its versions run from 0 to {latest}; pruned versions are gone."))
            }
            RecordDeleted { version, .. } => Some(format!(
                "Version {version} is a tombstone; earlier versions and the history remain readable."
            )),
            NotYetCreated { created_at, .. } => Some(format!("It was created at {created_at}.")),
            SchemaViolation(v) => Some(format!(
                "At {}: {} (rule \"{}\", schema path {}). Nothing was written.",
                v.pointer, v.message, v.rule, v.schema_path
            )),
            StaleVersion { expected, actual, .. } if expected < actual => Some(format!(
                "Version {actual} was written after version {expected}; nothing was written."
            )),
            StaleVersion { .. } => Some("Nothing was written.".into()),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        use EventicError::*;
        match self {
            RecordNotFound { .. } => {
                Some("Create it with eventic.create(class_name, data).".into())
            }
            VersionNotFound { .. } => {
                Some("See eventic.history(id) for the versions that exist.".into())
            }
            RecordDeleted { .. } => Some(
                "Read an earlier version with eventic.hydrate(id, version) or eventic.history(id)."
                    .into(),
            ),
            WorkflowNotFound { .. } => {
                Some("See SELECT workflow_id, status FROM eventic.workflows.".into())
            }
            JobNotFound { queue, .. } => Some(format!(
                "ack/nack/extend_lease need a job taken with eventic.dequeue; retry_job a dead one. \
                 See SELECT * FROM eventic.queue_{queue}."
            )),
            StaleVersion { .. } => Some(
                "Re-read the record with eventic.hydrate(id) and retry with its current version."
                    .into(),
            ),
            RecordExists { .. } => Some(
                "Ids are never reused, not even after eventic.delete; change a live record with \
                 eventic.set_fields(id, patch), or create a new one without an id."
                    .into(),
            ),
            NotYetCreated { .. } => {
                Some("created_at is the clock time of each write; see eventic.history(id).".into())
            }
            SchemaViolation(v) => Some(format!(
                "Fix the document, or evolve the schema with eventic.register_class('{class}', new_schema); \
                 see SELECT json_schema FROM eventic.classes WHERE class_name = '{class}'.",
                class = v.class
            )),
            InvalidArgument { hint, .. }
            | NotAllowed { hint, .. }
            | NotReady { hint, .. }
            | UnknownObject { hint, .. }
            | AlreadyExists { hint, .. }
                if !hint.is_empty() =>
            {
                Some(hint.clone())
            }
            _ => None,
        }
    }

    /// Raise this error as a Postgres ERROR. Does not return.
    #[track_caller]
    pub fn report(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "eventic");
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// A SQLSTATE as its five characters (Postgres packs them 6 bits each, MAKE_SQLSTATE).
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let code = code as i32;
    (0..5)
        .map(|i| ((((code >> (6 * i)) & 0x3F) as u8) + b'0') as char)
        .collect()
}

/// The value of a required argument, or 22023 naming it.
pub fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| EventicError::null_argument(name))
}

/// `result.or_report()`: the value, or the error raised as a Postgres ERROR.
pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T> OrReport<T> for Result<T> {
    #[track_caller]
    fn or_report(self) -> T {
        match self {
            Ok(value) => value,
            Err(err) => err.report(),
        }
    }
}
