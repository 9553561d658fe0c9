//! `mmr.resolve_conflict`: a person settles a pending conflict.
//!
//! The chosen version is written here as an ordinary local change (captured, stamped,
//! so it causally follows everything this node has for the key and wins everywhere),
//! and the decision is inserted into `mmr.resolution_log`, which replicates in the same
//! transaction; its trigger marks the conflict resolved on every node.

use crate::apply::rowsql;
use crate::catalog;
use crate::error::{spi, MmrError, OrRaise, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;

#[pg_extern]
fn _resolve_conflict(id: Option<i64>, choice: Option<&str>, row: Option<JsonB>) {
    resolve(MmrError::required(id, "id"), choice, row.map(|r| r.0)).or_raise()
}

struct Pending {
    tbl: String,
    pk: serde_json::Value,
    local_row: Option<serde_json::Value>,
    remote_row: Option<serde_json::Value>,
    upto: i64,
}

fn resolve(id: i64, choice: Option<&str>, row: Option<serde_json::Value>) -> Result<()> {
    let me = catalog::require_node()?;
    let p = pending(id)?;
    let (label, chosen) = match (choice, row) {
        (Some("local"), _) => ("kept local version".to_string(), p.local_row.clone()),
        (Some("remote"), _) => ("kept remote version".to_string(), p.remote_row.clone()),
        (Some(other), _) => return Err(MmrError::BadChoice(other.into())),
        (None, r) => ("wrote a new version".to_string(), r.filter(|v| !v.is_null())),
    };
    if let Some(kind) = chosen.as_ref().and_then(not_an_object) {
        return Err(MmrError::BadRow(kind.into()));
    }
    // The key is the conflict's, whatever the chosen image says.
    let chosen = chosen.map(|mut v| {
        if let (Some(obj), Some(key)) = (v.as_object_mut(), p.pk.as_object()) {
            for (k, kv) in key {
                obj.insert(k.clone(), kv.clone());
            }
        }
        v
    });
    Spi::connect_mut(|client| -> Result<()> {
        let relid = replicated_relid(client, &p.tbl)?;
        write(client, relid, &p.tbl, &p.pk, chosen.as_ref())?;
        client
            .update(
                "INSERT INTO mmr.resolution_log (tbl, pk, upto_hlc, choice, resolved_on) \
                 VALUES ($1, $2, greatest($3, $6), $4, $5)",
                None,
                &[
                    p.tbl.as_str().into(),
                    JsonB(p.pk.clone()).into(),
                    p.upto.into(),
                    label.as_str().into(),
                    me.name.as_str().into(),
                    // At least every stamp this node has written, the decision's included.
                    crate::clock::current().into(),
                ],
            )
            .map_err(spi)?;
        Ok(())
    })
}

/// What a JSON value is, if it is not an object (a row image must be one).
fn not_an_object(v: &serde_json::Value) -> Option<&'static str> {
    match v {
        serde_json::Value::Object(_) => None,
        serde_json::Value::Array(_) => Some("an array"),
        serde_json::Value::String(_) => Some("a string"),
        serde_json::Value::Number(_) => Some("a number"),
        serde_json::Value::Bool(_) => Some("a boolean"),
        serde_json::Value::Null => Some("null"),
    }
}

fn pending(id: i64) -> Result<Pending> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT tbl, pk, local_row, remote_row, greatest(coalesce(local_hlc, 0), coalesce(remote_hlc, 0)), resolution \
                 FROM mmr.conflicts WHERE id = $1",
                Some(1),
                &[id.into()],
            )
            .map_err(spi)?;
        if rows.is_empty() {
            return Err(MmrError::UnknownConflict(id));
        }
        let r = rows.first();
        let resolution: String = r.get(6).map_err(spi)?.unwrap_or_default();
        if resolution != "pending" {
            return Err(MmrError::ConflictNotPending { id, resolution });
        }
        Ok(Pending {
            tbl: r.get(1).map_err(spi)?.unwrap_or_default(),
            pk: r.get::<JsonB>(2).map_err(spi)?.map(|j| j.0).unwrap_or_default(),
            local_row: r.get::<JsonB>(3).map_err(spi)?.map(|j| j.0),
            remote_row: r.get::<JsonB>(4).map_err(spi)?.map(|j| j.0),
            upto: r.get(5).map_err(spi)?.unwrap_or(0),
        })
    })
}

fn replicated_relid(client: &SpiClient<'_>, tbl: &str) -> Result<pg_sys::Oid> {
    let rows = client
        .select(
            "SELECT relid::oid FROM mmr.replicated_table WHERE relid = pg_catalog.to_regclass($1)",
            Some(1),
            &[tbl.into()],
        )
        .map_err(spi)?;
    if rows.is_empty() {
        return Err(MmrError::NotReplicated(tbl.into()));
    }
    rows.first().get::<pg_sys::Oid>(1).map_err(spi)?.ok_or_else(|| MmrError::NotReplicated(tbl.into()))
}

/// Makes the key hold `chosen` (NULL = deleted) through ordinary writes, which the
/// capture triggers stamp and queue.
fn write(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    tbl: &str,
    pk: &serde_json::Value,
    chosen: Option<&serde_json::Value>,
) -> Result<()> {
    let shape = rowsql::shape(client, relid, tbl)?;
    let Some(row) = chosen else {
        client
            .update(&format!("DELETE FROM {tbl} x WHERE {}", shape.key_match("$1")), None, &[JsonB(pk.clone()).into()])
            .map_err(spi)?;
        return Ok(());
    };
    let cols: Vec<&rowsql::Col> = shape.image_cols().collect();
    let settable: Vec<&&rowsql::Col> =
        cols.iter().filter(|c| !shape.pk.contains(&c.ident) && !c.identity_always).collect();
    let overriding = if cols.iter().any(|c| c.identity_always) { "OVERRIDING SYSTEM VALUE" } else { "" };
    let on_conflict = if settable.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!(
            "DO UPDATE SET ({}) = ROW({})",
            settable.iter().map(|c| c.ident.as_str()).collect::<Vec<_>>().join(", "),
            settable.iter().map(|c| format!("excluded.{}", c.ident)).collect::<Vec<_>>().join(", ")
        )
    };
    let sql = format!(
        "INSERT INTO {tbl} ({cols}) {overriding} SELECT {rcols} FROM {src} ON CONFLICT ({keys}) {on_conflict}",
        cols = cols.iter().map(|c| c.ident.as_str()).collect::<Vec<_>>().join(", "),
        rcols = cols.iter().map(|c| format!("r.{}", c.ident)).collect::<Vec<_>>().join(", "),
        src = shape.source("$1"),
        keys = shape.pk.join(", "),
    );
    client.update(&sql, None, &[JsonB(row.clone()).into()]).map_err(spi)?;
    Ok(())
}
