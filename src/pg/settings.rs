//! Session settings that change how values are written as text, held fixed wherever mmr
//! turns values into text that another node will read, or compares keys as jsonb.
//!
//! A `date[]` printed under `DateStyle = 'SQL, DMY'` reads `{31/12/1999}`; another node
//! reading it under MDY fails, or worse, reads `04/03/2026` as another day. So:
//! * the apply workers run with these settings fixed for their whole session
//!   (`worker::session_settings`);
//! * the capture triggers, which run in the writer's session, switch to them around
//!   their work -- but only the settings that the table's column types depend on, and
//!   only when the session's value differs, so a table of plain columns (or a session
//!   with the usual defaults) pays nothing.
//!
//! Top-level dates, times and floats are written by the encoder in a fixed form of its
//! own (capture/encode.rs); the settings matter for values inside arrays, ranges,
//! composites and domains, and for types printed by their output function.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Which settings a value's text form depends on (bit set).
pub type Needs = u8;
pub const DATESTYLE: Needs = 1;
pub const INTERVALSTYLE: Needs = 2;
pub const FLOAT_DIGITS: Needs = 4;
pub const BYTEA: Needs = 8;
pub const TIMEZONE: Needs = 16;
pub const MONETARY: Needs = 32;
pub const ALL: Needs = 63;

/// The fixed value of each setting, in the order of the bits above.
const FIXED: [(&CStr, &CStr); 6] = [
    (c"DateStyle", c"ISO, YMD"),
    (c"IntervalStyle", c"postgres"),
    // Any value above 0 prints the shortest text that reads back exactly.
    (c"extra_float_digits", c"1"),
    (c"bytea_output", c"hex"),
    (c"TimeZone", c"UTC"),
    (c"lc_monetary", c"C"),
];

/// Limits a DBA sets for applications, off in every session mmr opens on a peer: a
/// pull waits on locks there, a join's copy runs long and sits in its transaction while
/// this node writes, a divergence check reads whole tables; cancelling one only starts
/// it over. A pull also records what the puller has applied, which a database made
/// read-only for its applications (`default_transaction_read_only`) would refuse.
pub const REMOTE_APPLICATION_LIMITS_OFF: [&str; 5] = [
    "SET statement_timeout = 0",
    "SET lock_timeout = 0",
    "SET idle_in_transaction_session_timeout = 0",
    "SET idle_session_timeout = 0",
    "SET default_transaction_read_only = off",
];

/// The fixed settings as `SET` statements, for a session mmr opens on another server
/// to read values as text there (a join's copy), and the search_path that makes every
/// `regclass` print schema-qualified.
pub fn remote_session_setup() -> Vec<String> {
    FIXED
        .iter()
        .map(|(name, value)| format!("SET {} = '{}'", name.to_string_lossy(), value.to_string_lossy()))
        .chain(std::iter::once("SET search_path = pg_catalog".to_string()))
        .chain(REMOTE_APPLICATION_LIMITS_OFF.map(String::from))
        .collect()
}

/// Sets them (and that search_path) for the rest of the current transaction, so that
/// text from a `remote_session_setup` session reads back as the same values here.
pub fn fix_for_transaction() -> std::result::Result<(), pgrx::spi::SpiError> {
    for (name, value) in FIXED.iter() {
        Spi::run_with_args(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &[name.to_string_lossy().as_ref().into(), value.to_string_lossy().as_ref().into()],
        )?;
    }
    Spi::run("SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
}

/// While it lives, settings changed with `set_saved` are scoped to it: they return to
/// their values when it is dropped (a GUC nest level, as a function's `SET` clause makes
/// one), or when an ERROR aborts the transaction. (Not those of `set_config(.., true)`:
/// leaving a nest level that commits hands them on to the one outside.)
pub struct Scope {
    level: i32,
    /// Whether a plain `SET` made inside outlives it (as after a function call), or
    /// everything set inside is undone (as after a subtransaction that rolled back).
    keep_plain_sets: bool,
}

impl Scope {
    pub fn enter() -> Scope {
        // SAFETY: a new GUC nest level, popped in drop (or by abort).
        Scope { level: unsafe { pg_sys::NewGUCNestLevel() }, keep_plain_sets: true }
    }

    /// A scope that undoes every setting made inside it, plain `SET`s too: for running
    /// statements that came from elsewhere (replicated DDL) in a long-lived session.
    pub fn sealed() -> Scope {
        Scope { keep_plain_sets: false, ..Scope::enter() }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: pops the nest level made in enter(), restoring the saved values.
            unsafe { pg_sys::AtEOXact_GUC(self.keep_plain_sets, self.level) };
        }
    }
}

/// What the text form of one base type depends on. Types of extensions (oids past the
/// built-in range) may depend on anything: all settings are fixed for them.
pub fn needs_of_base(typid: pg_sys::Oid) -> Needs {
    match typid {
        pg_sys::DATEOID | pg_sys::TIMEOID | pg_sys::TIMETZOID | pg_sys::TIMESTAMPOID => DATESTYLE,
        // Printed with the session's offset: exact either way, but a key printed under two
        // time zones is two different jsonb keys (tombstones are found by key).
        pg_sys::TIMESTAMPTZOID => DATESTYLE | TIMEZONE,
        pg_sys::INTERVALOID => INTERVALSTYLE,
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => FLOAT_DIGITS,
        pg_sys::POINTOID
        | pg_sys::LSEGOID
        | pg_sys::PATHOID
        | pg_sys::BOXOID
        | pg_sys::POLYGONOID
        | pg_sys::LINEOID
        | pg_sys::CIRCLEOID => FLOAT_DIGITS,
        pg_sys::BYTEAOID => BYTEA,
        pg_sys::MONEYOID => MONETARY,
        t if u32::from(t) >= pg_sys::FirstNormalObjectId => ALL,
        _ => 0,
    }
}

/// What the text form of a value of `typid` depends on, looking through arrays,
/// domains, ranges, multiranges and composite types (read from the catalog).
pub fn needs_of_type(typid: pg_sys::Oid) -> std::result::Result<Needs, pgrx::spi::SpiError> {
    let bases = Spi::get_one_with_args::<Vec<pg_sys::Oid>>(
        "WITH RECURSIVE r(t) AS ( \
           SELECT $1::pg_catalog.oid \
           UNION \
           SELECT s.t FROM r JOIN pg_catalog.pg_type ty ON ty.oid = r.t \
           CROSS JOIN LATERAL ( \
             SELECT ty.typelem WHERE ty.typelem <> 0 AND ty.typtype = 'b' \
             UNION ALL SELECT ty.typbasetype WHERE ty.typtype = 'd' \
             UNION ALL SELECT g.rngsubtype FROM pg_catalog.pg_range g WHERE g.rngtypid = ty.oid \
             UNION ALL SELECT g.rngtypid FROM pg_catalog.pg_range g WHERE g.rngmultitypid = ty.oid \
             UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                       WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
           ) s(t)) \
         SELECT pg_catalog.array_agg(r.t) FROM r JOIN pg_catalog.pg_type ty ON ty.oid = r.t WHERE ty.typtype = 'b'",
        &[typid.into()],
    )?;
    Ok(bases.unwrap_or_default().into_iter().fold(0, |n, t| n | needs_of_base(t)))
}

/// Whether a setting's current value is one of `values`.
fn setting_is(name: &CStr, values: &[&[u8]]) -> bool {
    // SAFETY: GetConfigOption returns the setting's current value (static storage) or NULL.
    let v = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    // SAFETY: a NUL-terminated string when not NULL.
    !v.is_null() && values.contains(&unsafe { CStr::from_ptr(v) }.to_bytes())
}

/// Whether this session's value of setting `bit` already is the fixed one.
fn already_fixed(bit: usize) -> bool {
    // SAFETY: plain reads of the backend's GUC variables.
    unsafe {
        match bit {
            0 => pg_sys::DateStyle == pg_sys::USE_ISO_DATES as i32,
            1 => pg_sys::IntervalStyle == pg_sys::INTSTYLE_POSTGRES as i32,
            2 => pg_sys::extra_float_digits > 0,
            3 => setting_is(c"bytea_output", &[b"hex"]),
            4 => {
                let tz = pg_sys::pg_get_timezone_name(pg_sys::session_timezone);
                !tz.is_null() && CStr::from_ptr(tz) == c"UTC"
            }
            _ => setting_is(c"lc_monetary", &[b"C", b"POSIX"]),
        }
    }
}

/// Sets a setting until the enclosing `Scope` ends (as `SET` in a function does).
pub fn set_saved(name: &str, value: &str) -> crate::error::Result<()> {
    let bad = |_| crate::error::MmrError::Protocol(format!("setting {name} holds a zero byte"));
    let (n, v) = (std::ffi::CString::new(name).map_err(bad)?, std::ffi::CString::new(value).map_err(bad)?);
    save(&n, &v);
    Ok(())
}

/// Sets a setting until the current GUC nest level ends; an invalid value raises an
/// ERROR. As the session's user may: superuser-only settings for superusers.
fn save(name: &CStr, value: &CStr) {
    // SAFETY: plain C call with NUL-terminated strings.
    unsafe {
        let context = if pg_sys::superuser() { pg_sys::GucContext::PGC_SUSET } else { pg_sys::GucContext::PGC_USERSET };
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// The settings in `needs` switched to their fixed values until dropped (a GUC nest
/// level, as a function's `SET` clause makes one). When an ERROR unwinds, the
/// (sub)transaction abort restores them instead.
pub struct Fixed {
    nest: Option<i32>,
}

impl Fixed {
    pub fn enter(needs: Needs) -> Fixed {
        let mut nest = None;
        for (bit, (name, value)) in FIXED.iter().enumerate() {
            if needs & (1 << bit) == 0 || already_fixed(bit) {
                continue;
            }
            if nest.is_none() {
                // SAFETY: a GUC nest level popped in drop (or by abort).
                nest = Some(unsafe { pg_sys::NewGUCNestLevel() });
            }
            save(name, value);
        }
        Fixed { nest }
    }

    /// Sets them, and `extra` settings, for the rest of the session (the workers).
    pub fn for_session(extra: &[(&CStr, &CStr)]) {
        for (name, value) in FIXED.iter().chain(extra) {
            // SAFETY: setting a GUC for this session, outside any transaction context.
            unsafe {
                pg_sys::SetConfigOption(
                    name.as_ptr(),
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_SUSET,
                    pg_sys::GucSource::PGC_S_OVERRIDE,
                )
            };
        }
    }
}

impl Drop for Fixed {
    fn drop(&mut self) {
        if let Some(level) = self.nest {
            if !std::thread::panicking() {
                // SAFETY: pops the nest level made in enter(), restoring the saved values.
                unsafe { pg_sys::AtEOXact_GUC(true, level) };
            }
        }
    }
}
