//! Statements that must see the latest committed data whatever the caller's isolation
//! level: the tombstone look-ups of the capture triggers -- a REPEATABLE READ
//! transaction would otherwise miss a tombstone committed by the apply worker after it
//! started, and give a re-inserted key a fresh version vector (PostgreSQL's foreign-key
//! triggers use the same device) -- and the polls of functions that wait for peers'
//! progress, which a transaction snapshot would hold at the positions of when they
//! were called (`default_transaction_isolation = 'repeatable read'`).

use pgrx::pg_sys;
use pgrx::PgOid;
use std::ffi::CString;

/// A prepared statement kept for the backend's lifetime, run with the latest snapshot.
pub struct LatestPlan(*mut pg_sys::_SPI_plan);

impl LatestPlan {
    /// Prepares `sql` (inside an SPI connection).
    pub fn prepare(sql: &str, types: &[PgOid]) -> Result<LatestPlan, String> {
        let c = CString::new(sql).map_err(|_| "statement contains a zero byte".to_string())?;
        let mut oids: Vec<pg_sys::Oid> = types.iter().map(|t| t.value()).collect();
        // SAFETY: called within an SPI connection; the plan is kept and freed on drop.
        unsafe {
            let plan = pg_sys::SPI_prepare(c.as_ptr(), oids.len() as i32, oids.as_mut_ptr());
            if plan.is_null() {
                return Err(format!("could not prepare: {sql}"));
            }
            pg_sys::SPI_keepplan(plan);
            Ok(LatestPlan(plan))
        }
    }

    /// Runs the statement with the latest snapshot; returns the first column of the
    /// first row (as a raw datum, valid until the SPI connection closes), if any.
    pub fn run(&self, args: &[(Option<pg_sys::Datum>, pg_sys::Oid)]) -> Result<Option<pg_sys::Datum>, String> {
        let mut values: Vec<pg_sys::Datum> = args.iter().map(|(d, _)| d.unwrap_or(pg_sys::Datum::from(0))).collect();
        let nulls: Vec<std::ffi::c_char> = args
            .iter()
            .map(|(d, _)| if d.is_some() { b' ' as std::ffi::c_char } else { b'n' as std::ffi::c_char })
            .collect();
        // SAFETY: the plan was prepared with these argument types; SPI_tuptable is read
        // right after the call, inside the caller's SPI connection.
        unsafe {
            let rc = pg_sys::SPI_execute_snapshot(
                self.0,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                false,
                false,
                0,
            );
            if rc < 0 {
                return Err(format!("SPI_execute_snapshot failed ({rc})"));
            }
            let tt = pg_sys::SPI_tuptable;
            if tt.is_null() || pg_sys::SPI_processed == 0 {
                return Ok(None);
            }
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(*(*tt).vals, (*tt).tupdesc, 1, &mut isnull);
            Ok((!isnull).then_some(d))
        }
    }
}

/// The first column of the first row of `sql` (arguments and their types as for
/// [`LatestPlan::run`]), read with the latest snapshot.
pub fn one<T: pgrx::FromDatum>(sql: &str, args: &[(Option<pg_sys::Datum>, pg_sys::Oid)]) -> Result<Option<T>, String> {
    pgrx::spi::Spi::connect(|_| {
        let types: Vec<PgOid> = args.iter().map(|&(_, oid)| PgOid::from(oid)).collect();
        let d = LatestPlan::prepare(sql, &types)?.run(args)?;
        // SAFETY: a datum of the statement's first column, which the caller says is a
        // `T`; copied out before the SPI connection closes.
        Ok(d.and_then(|d| unsafe { T::from_datum(d, false) }))
    })
}

impl Drop for LatestPlan {
    fn drop(&mut self) {
        // SAFETY: a kept plan, freed once.
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}
