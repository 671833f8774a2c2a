//! What a job is and how it runs: the function's signature, the conversion of `args` to its
//! parameter types (checked at enqueue), and one execution in a subtransaction as the role
//! that enqueued it.

use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::spi::OwnedPreparedStatement;
use pgrx::pg_sys;
use serde_json::Value;

use crate::catalog_cache::{function_generation, Generational};
use crate::errors::{EventicError, Result};
use crate::roles::run_job_as;
use crate::subxact::{in_subtransaction, Failure};

const SELECT_SIGNATURE: &str = "SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname),
        ARRAY(SELECT format_type(t, NULL)
                FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, i) ORDER BY i),
        p.pronargdefaults, p.prokind::text, format_type(p.prorettype, NULL), p.proretset
   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1";

/// How to call a job's function.
pub struct Signature {
    /// `schema.name`, quoted.
    name: String,
    /// Parameter types as SQL (`format_type`).
    types: Vec<String>,
    /// Parameters that have defaults (the last ones).
    defaults: usize,
    /// The result type as SQL (`format_type`), and whether it returns a set.
    returns: String,
    returns_set: bool,
}

thread_local! {
    /// Signatures looked up by this backend, until a function, type or schema changes.
    static SIGNATURES: RefCell<Generational<u32, Rc<Signature>>> = RefCell::new(Generational::new());
}

impl Signature {
    /// The signature of function `fn_oid` (42704 when there is none).
    pub fn of(fn_oid: pg_sys::Oid) -> Result<Rc<Signature>> {
        let generation = function_generation();
        if let Some(found) =
            SIGNATURES.with(|cached| cached.borrow_mut().get(generation, &fn_oid.to_u32()))
        {
            return Ok(found);
        }
        let signature = Rc::new(Self::look_up(fn_oid)?);
        SIGNATURES.with(|cached| {
            cached
                .borrow_mut()
                .insert(generation, fn_oid.to_u32(), signature.clone())
        });
        Ok(signature)
    }

    fn look_up(fn_oid: pg_sys::Oid) -> Result<Signature> {
        /// name, argument types, defaults, kind, return type, returns a set
        type ProcRow = (String, Vec<Option<String>>, i16, String, String, bool);
        let row = Spi::connect(|client| -> Result<Option<ProcRow>> {
            let stmt = crate::spi_plans::plan(
                client,
                SELECT_SIGNATURE,
                &[PgOid::BuiltIn(PgBuiltInOids::OIDOID)],
                false,
            )?;
            let mut table = client.select(&*stmt, Some(1), &[fn_oid.into()])?;
            let Some(row) = table.next() else {
                return Ok(None);
            };
            Ok(Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<Vec<Option<String>>>(2)?.unwrap_or_default(),
                row.get::<i16>(3)?.unwrap_or(0),
                row.get::<String>(4)?.unwrap_or_default(),
                row.get::<String>(5)?.unwrap_or_default(),
                row.get::<bool>(6)?.unwrap_or(false),
            )))
        })?;
        let Some((name, types, defaults, kind, returns, returns_set)) = row else {
            return Err(EventicError::UnknownObject {
                what: "function",
                name: fn_oid.to_u32().to_string(),
                hint: "Pass the job's function as 'schema.name(argtypes)'::regprocedure.".into(),
            });
        };
        if kind != "f" {
            return Err(EventicError::invalid(
                format!("{name} is not a plain function"),
                "A job runs SELECT fn(args): pass a function, not a procedure or aggregate.",
            ));
        }
        Ok(Signature {
            name,
            types: types.into_iter().flatten().collect(),
            defaults: defaults as usize,
            returns,
            returns_set,
        })
    }

    /// eventic's own job functions (`eventic._run_workflow`): no role may EXECUTE them, so
    /// they run as the extension owner and switch to the role they act for themselves. No
    /// other role can create functions in schema eventic.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("eventic._")
    }

    /// Whether it has the shape of a workflow body: `fn(input jsonb) RETURNS jsonb`.
    pub fn is_workflow_body(&self) -> bool {
        self.takes_whole_jsonb() && self.returns == "jsonb" && !self.returns_set
    }

    /// A function with a single jsonb parameter gets `args` whole.
    pub fn takes_whole_jsonb(&self) -> bool {
        self.types.len() == 1 && self.types[0] == "jsonb"
    }

    /// The JSON array of positional arguments, checked against the parameter count.
    fn positional<'a>(&self, args: &'a Value) -> Result<&'a Vec<Value>> {
        let values = args.as_array().ok_or_else(|| {
            EventicError::invalid(
                format!("args for {} must be a JSON array", self.name),
                "Pass one element per parameter, e.g. '[\"a\", 2]'::jsonb.",
            )
        })?;
        let required = self.types.len() - self.defaults;
        if values.len() < required || values.len() > self.types.len() {
            let takes = if self.defaults > 0 {
                format!("{required} to {}", self.types.len())
            } else {
                required.to_string()
            };
            return Err(EventicError::invalid(
                format!(
                    "{} takes {takes} argument(s) ({}), args has {}",
                    self.name,
                    self.types.join(", "),
                    values.len()
                ),
                "Pass one JSON element per parameter, in order.",
            ));
        }
        Ok(values)
    }

    /// `$1::type1, $2::type2, …` for the first `n` parameters.
    fn casts(&self, n: usize) -> String {
        (0..n)
            .map(|i| format!("${}::{}", i + 1, self.types[i]))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The SQL that calls the function with `args`, and its text parameters (each cast to
    /// its parameter type by the SQL: strings as they are, other JSON as its text).
    pub fn call(&self, args: &Value) -> Result<(String, Vec<Option<String>>)> {
        let (expr, texts) = self.call_expr(args)?;
        Ok((format!("SELECT {expr}"), texts))
    }

    /// Like [`Signature::call`], with the result as jsonb (a workflow step's record).
    pub fn call_returning_json(&self, args: &Value) -> Result<(String, Vec<Option<String>>)> {
        let (expr, texts) = self.call_expr(args)?;
        Ok((format!("SELECT to_jsonb({expr})"), texts))
    }

    fn call_expr(&self, args: &Value) -> Result<(String, Vec<Option<String>>)> {
        if self.takes_whole_jsonb() {
            return Ok((
                format!("{}($1::jsonb)", self.name),
                vec![Some(args.to_string())],
            ));
        }
        let values = self.positional(args)?;
        Ok((
            format!("{}({})", self.name, self.casts(values.len())),
            as_texts(values),
        ))
    }

    /// How many arguments a call with `args` passes (`None`: args that cannot be called).
    pub fn arity(&self, args: &Value) -> Option<usize> {
        if self.takes_whole_jsonb() {
            return Some(1);
        }
        self.positional(args).ok().map(Vec::len)
    }

    /// One statement that calls the function once per element of `args_list` (all of one
    /// [`Signature::arity`]), in order: `SELECT f(a1::t1, …) FROM unnest($1::text[], …)`, and
    /// its parameters, one text array per argument.
    pub fn group_call(&self, args_list: &[&Value]) -> Result<(String, Vec<Vec<Option<String>>>)> {
        if self.takes_whole_jsonb() {
            let texts = args_list
                .iter()
                .map(|args| Some(args.to_string()))
                .collect();
            return Ok((
                format!(
                    "SELECT {}(a1::jsonb) FROM unnest($1::text[]) u(a1)",
                    self.name
                ),
                vec![texts],
            ));
        }
        let arity = args_list
            .first()
            .map(|args| self.positional(args).map(Vec::len))
            .transpose()?
            .unwrap_or(0);
        // one column per argument (a call without arguments still needs one row per job)
        let mut columns = vec![Vec::with_capacity(args_list.len()); arity.max(1)];
        for args in args_list {
            let values = self.positional(args)?;
            if values.len() != arity {
                return Err(EventicError::Internal(
                    "jobs of one group differ in arity".into(),
                ));
            }
            for (column, text) in columns.iter_mut().zip(as_texts(values)) {
                column.push(text);
            }
            if arity == 0 {
                columns[0].push(None);
            }
        }
        let casts = (0..arity)
            .map(|i| format!("a{}::{}", i + 1, self.types[i]))
            .collect::<Vec<_>>()
            .join(", ");
        let arrays = (0..columns.len())
            .map(|i| format!("${}::text[]", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let names = (0..columns.len())
            .map(|i| format!("a{}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        Ok((
            format!(
                "SELECT {}({casts}) FROM unnest({arrays}) u({names})",
                self.name
            ),
            columns,
        ))
    }

    /// 22023 now, not a failed job later: every argument must convert to its parameter type.
    pub fn check_args(&self, args: &Value) -> Result<()> {
        if self.takes_whole_jsonb() {
            return Ok(());
        }
        let values = self.positional(args)?;
        if values.is_empty() {
            return Ok(());
        }
        if values
            .iter()
            .zip(&self.types)
            .all(|(value, sql_type)| surely_converts(value, sql_type))
        {
            return Ok(());
        }
        let probe = format!("SELECT {}", self.casts(values.len()));
        let texts = as_texts(values);
        in_subtransaction(|| run_sql(&probe, &texts)).map_err(|failure| {
            EventicError::invalid(
                format!(
                    "args do not match the parameters of {}: {}",
                    self.name, failure.message
                ),
                format!("{} takes ({}).", self.name, self.types.join(", ")),
            )
        })?
    }
}

/// Whether `value` converts to `sql_type` for certain, judged without asking Postgres (which
/// needs a subtransaction to catch a failure): the common cases of enqueue.
fn surely_converts(value: &Value, sql_type: &str) -> bool {
    match (value, sql_type) {
        (Value::Null, _) => true,
        (_, "jsonb" | "json") => true,
        (Value::String(_), "text" | "character varying") => true,
        (Value::Number(n), "integer") => n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()),
        (Value::Number(n), "bigint") => n.as_i64().is_some(),
        (Value::Number(n), "smallint") => n.as_i64().is_some_and(|v| i16::try_from(v).is_ok()),
        (Value::Number(_), "numeric" | "double precision" | "real") => true,
        (Value::Bool(_), "boolean") => true,
        (Value::String(s), "uuid") => uuid::Uuid::parse_str(s).is_ok(),
        _ => false,
    }
}

fn as_texts(values: &[Value]) -> Vec<Option<String>> {
    values
        .iter()
        .map(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
        .collect()
}

fn run_sql(sql: &str, texts: &[Option<String>]) -> Result<()> {
    let args: Vec<pgrx::datum::DatumWithOid> = texts.iter().map(|t| t.clone().into()).collect();
    Spi::connect_mut(|client| {
        client.update(sql, None, &args)?;
        Ok(())
    })
}

/// A job taken from a queue, ready to run.
pub struct Job {
    pub job_id: i64,
    pub fn_oid: pg_sys::Oid,
    pub args: Value,
    pub enqueued_by: pg_sys::Oid,
    /// Why its args cannot be read (JSON eventic cannot hold, put there by a direct INSERT
    /// or an older version): such a job fails for good instead of failing the claim.
    pub unreadable: Option<String>,
    /// It failed (or its process died) before: it runs alone, not in a group.
    pub retried: bool,
}

/// What one drain has looked up: whether each role exists. (Signatures are cached per
/// backend by [`Signature::of`]; a call's SQL is planned once per connection, by
/// `spi_plans::dynamic_plan`.)
#[derive(Default)]
pub struct Calls {
    roles: HashMap<u32, bool>,
}

impl Calls {
    /// Whether the role still exists (a dropped role's jobs must not run as a dangling oid).
    fn role_exists(&mut self, role: pg_sys::Oid) -> Result<bool> {
        if let Some(found) = self.roles.get(&role.to_u32()) {
            return Ok(*found);
        }
        let exists = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE oid = $1)",
            &[role.into()],
        )?
        .unwrap_or(false);
        self.roles.insert(role.to_u32(), exists);
        Ok(exists)
    }

    /// Run a statement whose one column is jsonb; its value.
    pub fn query_json(&mut self, sql: &str, texts: &[Option<String>]) -> Result<Value> {
        let args: Vec<pgrx::datum::DatumWithOid> = texts.iter().map(|t| t.clone().into()).collect();
        Spi::connect_mut(|client| {
            let plan = self.plan(client, sql, texts.len())?;
            let mut rows = client.update(&*plan, Some(1), &args)?;
            let value = match rows.next() {
                Some(row) => crate::raw_jsonb::column(&row, 1)?,
                None => None,
            };
            Ok(value.unwrap_or(Value::Null))
        })
    }

    /// The kept plan of a job's call (its parameters are all text, cast in the SQL).
    fn plan(
        &self,
        client: &pgrx::spi::SpiClient<'_>,
        sql: &str,
        nargs: usize,
    ) -> Result<Rc<OwnedPreparedStatement>> {
        let types = vec![PgOid::BuiltIn(PgBuiltInOids::TEXTOID); nargs];
        crate::spi_plans::dynamic_plan(client, sql, &types)
    }

    fn execute(&mut self, sql: &str, texts: &[Option<String>]) -> Result<()> {
        let args: Vec<pgrx::datum::DatumWithOid> = texts.iter().map(|t| t.clone().into()).collect();
        Spi::connect_mut(|client| {
            let plan = self.plan(client, sql, texts.len())?;
            client.update(&*plan, None, &args)?;
            Ok(())
        })
    }
}

fn failure_of(err: EventicError) -> Failure {
    Failure {
        sqlstate: err.sqlstate_text(),
        message: err.to_string(),
    }
}

/// Who runs a job: its enqueuer, or (`None`) eventic itself for its own functions.
fn runner(signature: &Signature, job: &Job) -> Option<pg_sys::Oid> {
    (!signature.is_internal()).then_some(job.enqueued_by)
}

/// Run `f` as a job's runner: as its enqueuer ([`run_job_as`]), or for eventic's own
/// functions as the extension owner with the pinned search_path (they switch to the role
/// they act for themselves).
fn run_as_runner<T>(runner: Option<pg_sys::Oid>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match runner {
        Some(role) => run_job_as(role, f),
        None => crate::roles::run_internal_job_as(crate::roles::extension_owner()?, f),
    }
}

/// Run `job` as its enqueuer in a subtransaction. Its database effects are kept only when
/// it succeeds (and commit with the caller's transaction).
pub fn run(job: &Job, calls: &mut Calls) -> std::result::Result<(), Failure> {
    if let Some(failure) = job.unreadable_failure() {
        return Err(failure);
    }
    let signature = Signature::of(job.fn_oid).map_err(failure_of)?;
    let (sql, texts) = signature.call(&job.args).map_err(failure_of)?;
    let role = runner(&signature, job);
    if !calls.role_exists(job.enqueued_by).map_err(failure_of)? {
        return Err(Failure {
            sqlstate: "42704".into(),
            message: format!(
                "role {} that enqueued this job no longer exists",
                job.enqueued_by.to_u32()
            ),
        });
    }
    in_subtransaction(|| run_as_runner(role, || calls.execute(&sql, &texts)))
        .and_then(|outcome| outcome.map_err(failure_of))
}

/// Run `group` (jobs of one function, enqueuer and arity, in order) as one statement in one
/// subtransaction, as their enqueuer: one executor start for all of them, and a SQL
/// function's plan reused from call to call. All or nothing: on an ERROR nothing of the
/// group is kept, and the caller runs its jobs one by one to tell which one failed.
pub fn run_group(group: &[Job], calls: &mut Calls) -> std::result::Result<(), Failure> {
    let Some(first) = group.first() else {
        return Ok(());
    };
    let args_list: Vec<&Value> = group.iter().map(|job| &job.args).collect();
    let signature = Signature::of(first.fn_oid).map_err(failure_of)?;
    let (sql, columns) = signature.group_call(&args_list).map_err(failure_of)?;
    let role = runner(&signature, first);
    if !calls.role_exists(first.enqueued_by).map_err(failure_of)? {
        return Err(Failure {
            sqlstate: "42704".into(),
            message: "the role that enqueued these jobs no longer exists".into(),
        });
    }
    in_subtransaction(|| {
        run_as_runner(role, || {
            let types = vec![PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID); columns.len()];
            let args: Vec<pgrx::datum::DatumWithOid> =
                columns.into_iter().map(|column| column.into()).collect();
            Spi::connect_mut(|client| -> Result<()> {
                let plan = crate::spi_plans::dynamic_plan(client, &sql, &types)?;
                client.update(&*plan, None, &args)?;
                Ok(())
            })
        })
    })
    .and_then(|outcome| outcome.map_err(failure_of))
}

/// Whether two jobs can run in one group ([`run_group`]): same function, enqueuer and arity.
pub fn same_call(a: &Job, b: &Job) -> bool {
    a.unreadable.is_none()
        && b.unreadable.is_none()
        && !a.retried
        && !b.retried
        && a.fn_oid == b.fn_oid
        && a.enqueued_by == b.enqueued_by
        && !crate::progress::runs_alone(a.fn_oid)
        && match Signature::of(a.fn_oid) {
            // eventic's own jobs (a workflow run: a body and its steps, many subtransactions)
            // run one by one, so that a drain can stop between them (subxid budget)
            Ok(sig) => {
                !sig.is_internal()
                    && sig.arity(&a.args).is_some()
                    && sig.arity(&a.args) == sig.arity(&b.args)
            }
            Err(_) => false,
        }
}

/// Run `job` like [`run`] and return its function's result as JSON (a workflow step).
pub fn run_returning(job: &Job, calls: &mut Calls) -> std::result::Result<Value, Failure> {
    in_subtransaction(|| call_returning(job, calls)).and_then(|outcome| outcome.map_err(failure_of))
}

/// Like [`run_returning`] without a subtransaction of its own: an error propagates (an
/// inline workflow step, whose error abandons the body's subtransaction anyway).
pub fn call_returning(job: &Job, calls: &mut Calls) -> Result<Value> {
    let (sql, texts) = Signature::of(job.fn_oid)?.call_returning_json(&job.args)?;
    run_job_as(job.enqueued_by, || calls.query_json(&sql, &texts))
}

/// Read a claimed job row (job_id, fn, args, enqueued_by).
pub fn job_from(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Job> {
    let (args, unreadable) = match crate::raw_jsonb::column(row, 3) {
        Ok(args) => (args.unwrap_or(Value::Null), None),
        Err(err) => (Value::Null, Some(err.to_string())),
    };
    Ok(Job {
        job_id: row.get::<i64>(1)?.unwrap_or_default(),
        fn_oid: row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
        args,
        enqueued_by: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
        unreadable,
        retried: false,
    })
}

impl Job {
    /// A job of eventic's own making (a workflow step), its args known good.
    pub fn new(fn_oid: pg_sys::Oid, args: Value, enqueued_by: pg_sys::Oid) -> Job {
        Job {
            job_id: 0,
            fn_oid,
            args,
            enqueued_by,
            unreadable: None,
            retried: false,
        }
    }

    /// The failure of a job whose args cannot be read, if it is one.
    fn unreadable_failure(&self) -> Option<Failure> {
        self.unreadable.as_ref().map(|why| Failure {
            sqlstate: "22023".into(),
            message: format!("the job's args cannot be read: {why}"),
        })
    }
}
