//! Statements of hot paths, prepared once per backend and kept: a pull runs a dozen
//! short statements, and parsing and planning each of them every time was a large part
//! of a serving backend's CPU (make bench, lag part); an apply worker's round a few
//! more. PostgreSQL revalidates a kept plan by itself when what it uses changes (plan
//! cache invalidation), so a kept plan never runs against a table as it was.
//!
//! Kept statements run like `SpiClient::update`: each with a fresh snapshot at READ
//! COMMITTED, which the pull's polling relies on.

use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use pgrx::{PgBuiltInOids, PgOid};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static KEPT: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Argument types of kept statements.
pub const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
pub const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
pub const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
pub const JSONB: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);

/// Runs `sql` with `args` (of `types`), prepared on first use in this backend.
pub fn update<'conn>(
    c: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> SpiResult<SpiTupleTable<'conn>> {
    let plan = match KEPT.with(|k| k.borrow().get(sql).cloned()) {
        Some(p) => p,
        None => {
            let p = Rc::new(c.prepare_mut(sql, types)?.keep());
            KEPT.with(|k| k.borrow_mut().insert(sql, p.clone()));
            p
        }
    };
    c.update(&*plan, None, args)
}

/// Runs `sql` (see `update`) for its effect.
pub fn run(sql: &'static str, types: &[PgOid], args: &[pgrx::datum::DatumWithOid<'_>]) -> SpiResult<()> {
    pgrx::Spi::connect_mut(|c| update(c, sql, types, args).map(drop))
}

/// The first column of the first row of `sql` (see `update`), or `None` when there is
/// no row or it is NULL -- as `catalog::select_opt`, kept.
pub fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(
    sql: &'static str,
    types: &[PgOid],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> SpiResult<Option<T>> {
    pgrx::Spi::connect_mut(|c| {
        let t = update(c, sql, types, args)?;
        if t.is_empty() {
            return Ok(None);
        }
        t.first().get_one::<T>()
    })
}
