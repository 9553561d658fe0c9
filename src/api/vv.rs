//! A row's version vector in SQL. `mmr_vv` holds it in a compact binary form
//! (`mmr_core::vv`); these read and write it as the flat `bigint[]` of `(node, stamp)`
//! pairs mmr uses everywhere else.

use crate::error::MmrError;
use mmr_core::vv::VersionVector;
use pgrx::prelude::*;

/// The `(node, stamp)` pairs of a row's `mmr_vv`, by node id: `{1,S1,2,S2}`.
#[pg_extern(immutable, strict, parallel_safe)]
fn vv_array(vv: &[u8]) -> Vec<i64> {
    stored(vv).to_flat()
}

/// `vv_array(vv)::text`, without making the array: verify renders every row's `mmr_vv`
/// with it (verify/mod.rs).
#[pg_extern(immutable, strict, parallel_safe)]
fn _vv_text(vv: &[u8]) -> String {
    stored(vv).to_pg_array()
}

/// The vector `mmr_vv` holds, or an error saying these bytes are not one.
fn stored(vv: &[u8]) -> VersionVector {
    VersionVector::from_bytes(vv).unwrap_or_else(|e| {
        MmrError::BadArgument {
            message: format!("not a version vector of mmr_vv: {e}"),
            hint: "Pass a row's mmr_vv column as mmr stores it.".into(),
        }
        .raise()
    })
}

/// The stored form of a vector given as flat pairs. Internal: apply and the upgrade
/// script write `mmr_vv` with it.
#[pg_extern(immutable, strict, parallel_safe)]
fn _vv_bytea(flat: Vec<Option<i64>>) -> Vec<u8> {
    let flat: Option<Vec<i64>> = flat.into_iter().collect();
    flat.ok_or_else(|| "a NULL element".to_string())
        .and_then(|f| VersionVector::from_flat(&f).map_err(|e| e.to_string()))
        .map(|v| v.to_bytes())
        .unwrap_or_else(|e| MmrError::Damaged(format!("version vector: {e}")).raise())
}
