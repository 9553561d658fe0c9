//! Connection strings, parsed by libpq itself so mmr accepts exactly what libpq accepts
//! (key=value strings and postgresql:// URIs, with service, passfile, sslmode ...).

use std::ffi::{CStr, CString};

/// The options set in `conninfo`, in libpq's order, or libpq's error message.
pub fn parse(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let c = CString::new(conninfo).map_err(|_| "connection string contains a zero byte".to_string())?;
    let mut err: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: libpq parses a NUL-terminated string; we free what it returns.
    unsafe {
        let opts = pq_sys::PQconninfoParse(c.as_ptr(), &mut err);
        if opts.is_null() {
            let msg = if err.is_null() {
                "out of memory".to_string()
            } else {
                let m = CStr::from_ptr(err).to_string_lossy().trim().to_string();
                pq_sys::PQfreemem(err as *mut _);
                m
            };
            return Err(msg);
        }
        let mut out = Vec::new();
        let mut p = opts;
        while !(*p).keyword.is_null() {
            if !(*p).val.is_null() {
                out.push((
                    CStr::from_ptr((*p).keyword).to_string_lossy().into_owned(),
                    CStr::from_ptr((*p).val).to_string_lossy().into_owned(),
                ));
            }
            p = p.add(1);
        }
        pq_sys::PQconninfoFree(opts);
        check_ports(&out)?;
        Ok(out)
    }
}

/// libpq checks ports only when it connects; a dsn is stored and spread to every
/// member long before that: a port that is no number is refused at once.
fn check_ports(options: &[(String, String)]) -> Result<(), String> {
    for (_, ports) in options.iter().filter(|(k, _)| k == "port") {
        // One per host, comma-separated; an empty one means the default.
        if let Some(bad) = ports.split(',').map(str::trim).find(|p| !p.is_empty() && p.parse::<u16>().is_err()) {
            return Err(format!("invalid port \"{bad}\" in the connection string"));
        }
    }
    Ok(())
}

/// The connection string with any password replaced by `********`, for display.
pub fn masked(conninfo: &str) -> String {
    match parse(conninfo) {
        Ok(pairs) => mmr_core::conninfo::render(&pairs, true),
        Err(_) => "(invalid connection string)".into(),
    }
}
