//! SQL that reads a row image (a jsonb object keyed by column name) as a row of a
//! local table. Every column is read as text and cast to the local column type
//! (`($1->>'col')::type`), so values go through the type's input function exactly as
//! they went out through its output function, and a json/jsonb column holding JSON
//! `null` is told apart from SQL NULL (the capture trigger writes json values as
//! strings for this reason... see capture/encode.rs).

use crate::error::{spi, MmrError, Result};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal, SpiClient};

/// One live column of a table.
pub struct Col {
    /// Quoted identifier.
    pub ident: String,
    /// The name as stored.
    pub raw: String,
    /// `format_type` of the column, with its modifier.
    pub typ: String,
    pub generated: bool,
    pub identity_always: bool,
    /// Whether the column sorts by a collation other than "C" (text, varchar, their
    /// arrays and domains, in a database or with a collation of a locale): each
    /// database may sort it differently.
    pub sorts_unlike_c: bool,
    /// Former names of the column (renamed by replicated DDL): changes from nodes that
    /// have not renamed it yet carry them (ddl/shape.rs).
    pub olds: Vec<String>,
    /// The value a change that lacks the column gives it, as text (None: NULL): what
    /// ADD COLUMN gave the rows that existed then (`mmr.column_fill`, recorded when a
    /// replicated ADD COLUMN ran; else the attribute's missing value) -- which is what
    /// the writer's row has once it runs that ADD COLUMN.
    pub fill: Option<String>,
}

impl Col {
    fn is_mmr(&self) -> bool {
        matches!(self.raw.as_str(), "mmr_hlc" | "mmr_node" | "mmr_vv")
    }

    /// Whether a row image provides it: user columns that are not generated.
    pub fn in_image(&self) -> bool {
        !self.generated && !self.is_mmr()
    }
}

/// A table's columns (live, in order) and primary key, for building statements.
pub struct Shape {
    /// `"schema"."table"`.
    pub name: String,
    pub cols: Vec<Col>,
    /// Quoted primary-key columns, in key order.
    pub pk: Vec<String>,
    /// Names of columns dropped by replicated DDL: their values in changes are ignored.
    pub dropped: Vec<String>,
    /// The primary key as tombstones compare it.
    pub key: Vec<crate::tombstone_key::KeyColumn>,
}

pub fn shape(client: &SpiClient<'_>, relid: pg_sys::Oid, name: &str) -> Result<Shape> {
    let rows = client
        .select(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod), attgenerated <> '', attidentity = 'a', \
                    CASE WHEN f.relid IS NOT NULL THEN f.fill WHEN atthasmissing THEN (attmissingval::text::text[])[1] END, \
                    attcollation NOT IN (0, 950, 951) AND (attcollation <> 100 OR NOT EXISTS ( \
                        SELECT 1 FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database() \
                          AND datlocprovider = 'c' AND datcollate IN ('C', 'POSIX'))) \
             FROM pg_catalog.pg_attribute a LEFT JOIN mmr.column_fill f ON f.relid = a.attrelid AND f.name = a.attname \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            None,
            &[relid.into()],
        )
        .map_err(spi)?;
    let mut cols = Vec::new();
    for r in rows {
        let raw: String = r.get(1).map_err(spi)?.unwrap_or_default();
        cols.push(Col {
            ident: quote_identifier(&raw),
            raw,
            typ: r.get(2).map_err(spi)?.unwrap_or_default(),
            generated: r.get(3).map_err(spi)?.unwrap_or(false),
            identity_always: r.get(4).map_err(spi)?.unwrap_or(false),
            olds: Vec::new(),
            fill: r.get(5).map_err(spi)?,
            sorts_unlike_c: r.get(6).map_err(spi)?.unwrap_or(false),
        });
    }
    let mut dropped = Vec::new();
    for r in client
        .select("SELECT name, now_name FROM mmr.column_alias WHERE relid = $1::oid", None, &[relid.into()])
        .map_err(spi)?
    {
        let old: String = r.get(1).map_err(spi)?.unwrap_or_default();
        match r.get::<String>(2).map_err(spi)? {
            Some(now) => cols.iter_mut().filter(|c| c.raw == now).for_each(|c| c.olds.push(old.clone())),
            None => dropped.push(old),
        }
    }
    let key = crate::tombstone_key::key_columns(relid)?;
    if key.is_empty() {
        return Err(MmrError::NoPrimaryKey(name.into()));
    }
    let pk = key.iter().map(|c| quote_identifier(&c.name)).collect();
    Ok(Shape { name: name.into(), cols, pk, dropped, key })
}

impl Shape {
    /// Columns a row image provides, in table order.
    pub fn image_cols(&self) -> impl Iterator<Item = &Col> {
        self.cols.iter().filter(|c| c.in_image())
    }

    /// Column `c` read from the image `json`: by its name, or a former one, or else its
    /// fill (see `Col::fill`).
    fn value(c: &Col, json: &str) -> String {
        let read = |name: &str| format!("({json} ->> {})::{}", quote_literal(name), c.typ);
        if c.olds.is_empty() && c.fill.is_none() {
            return read(&c.raw);
        }
        let mut out = String::from("CASE");
        for name in std::iter::once(&c.raw).chain(&c.olds) {
            out.push_str(&format!(
                " WHEN pg_catalog.jsonb_exists({json}, {}) THEN {}",
                quote_literal(name),
                read(name)
            ));
        }
        let fill = c.fill.as_deref().map_or("NULL".to_string(), |f| format!("{}::{}", quote_literal(f), c.typ));
        out.push_str(&format!(" ELSE {fill} END"));
        out
    }

    /// How a row image reads as the image columns' values outside SQL (the same
    /// choice of name or fill as `value`).
    pub fn layout(&self) -> mmr_core::image::Layout {
        let cols = self.image_cols().map(|c| mmr_core::image::LayoutColumn {
            name: &c.raw,
            former_names: &c.olds,
            fill: c.fill.as_deref(),
        });
        // Generated columns are in images too (capture writes every column but mmr's),
        // and the table computes them.
        let generated = self.cols.iter().filter(|c| !c.in_image()).flat_map(|c| std::iter::once(&c.raw).chain(&c.olds));
        let ignored: Vec<String> = self.dropped.iter().chain(generated).cloned().collect();
        mmr_core::image::Layout::new(cols, &ignored)
    }

    /// How a row image reads as the key columns' values outside SQL (as `key_values`),
    /// whatever other columns it names.
    pub fn key_layout(&self) -> mmr_core::image::Layout {
        let cols = self.pk.iter().map(|k| self.key_col(k)).map(|c| mmr_core::image::LayoutColumn {
            name: &c.raw,
            former_names: &c.olds,
            fill: c.fill.as_deref(),
        });
        mmr_core::image::Layout::new(cols, &[]).lenient()
    }

    fn key_col(&self, ident: &str) -> &Col {
        self.cols.iter().find(|c| c.ident == ident).expect("key columns are columns")
    }

    /// The key columns' values given as text, `{alias}.k0`, `{alias}.k1`, ... in key
    /// order, cast to the columns' types.
    pub fn key_texts_typed(&self, alias: &str) -> Vec<String> {
        self.pk.iter().enumerate().map(|(i, k)| format!("({alias}.k{i})::{}", self.key_col(k).typ)).collect()
    }

    /// The key as `jsonb_build_object(...)` (the form of `key_json`) of the key columns'
    /// values given as text: `{alias}.k0`, `{alias}.k1`, ... in key order.
    pub fn key_json_of_texts(&self, alias: &str) -> String {
        let parts: Vec<String> = self
            .pk
            .iter()
            .zip(self.key_texts_typed(alias))
            .map(|(k, v)| format!("{}, {v}", quote_literal(unquote(k))))
            .collect();
        format!("pg_catalog.jsonb_build_object({})", parts.join(", "))
    }

    /// The image columns' values read from `json`, in table order.
    pub fn values(&self, json: &str) -> Vec<String> {
        self.image_cols().map(|c| Self::value(c, json)).collect()
    }

    /// The key columns' values read from `json`, in key order.
    pub fn key_values(&self, json: &str) -> Vec<String> {
        self.pk.iter().map(|k| Self::value(self.key_col(k), json)).collect()
    }

    /// `(k1, k2, ...)` of the key columns' expressions `values` (in key order), text
    /// ones in the "C" collation: an order of keys that is the same on every node,
    /// whatever collation each database gives its text. (Only where a column does not
    /// sort so already: an explicit collation keeps the key's index from serving ranges.)
    pub fn key_in_c_order(&self, values: &[String]) -> String {
        format!("({})", self.key_parts_in_c_order(values).join(", "))
    }

    /// The parts of `key_in_c_order`.
    pub fn key_parts_in_c_order(&self, values: &[String]) -> Vec<String> {
        self.pk
            .iter()
            .zip(values)
            .map(|(k, v)| if self.key_col(k).sorts_unlike_c { format!("({v}) COLLATE \"C\"") } else { v.clone() })
            .collect()
    }

    /// `(SELECT ... ) r`: the image `json` (a jsonb expression) as a one-row relation `r`
    /// with the image's columns.
    pub fn source(&self, json: &str) -> String {
        let cols: Vec<String> = self.image_cols().map(|c| format!("{} AS {}", Self::value(c, json), c.ident)).collect();
        format!("(SELECT {}) r", cols.join(", "))
    }

    /// The tombstone `{at}pk` (`at`: "" or an alias and a dot) is the key of typed
    /// values `values` (see tombstone_key.rs).
    pub fn tombstone_match(&self, at: &str, values: &[String]) -> String {
        crate::tombstone_key::matches(&self.key, at, &self.key_values(&format!("{at}pk")), values)
    }

    /// The `khash` of a tombstone of the key of typed values `values`.
    pub fn tombstone_khash(&self, values: &[String]) -> String {
        crate::tombstone_key::khash(&self.key, values)
    }

    /// Writes the tombstone of the key of typed values `values` (tombstone_key::put_sql).
    pub fn put_tombstone(&self, relid: pg_sys::Oid, values: &[String], version: (&str, &str, &str)) -> String {
        crate::tombstone_key::put_sql(relid, &self.key, values, &self.key_values("o.pk"), version)
    }

    /// `x`'s key equals the key of the image `json`.
    pub fn key_match(&self, json: &str) -> String {
        let left: Vec<String> = self.pk.iter().map(|c| format!("x.{c}")).collect();
        let right: Vec<String> = self.pk.iter().map(|c| format!("r.{c}")).collect();
        format!("({}) = (SELECT {} FROM {})", left.join(", "), right.join(", "), self.source(json))
    }

    /// The key of the image `json` as `jsonb_build_object(...)` over typed values: the
    /// canonical form tombstones are stored under (the capture trigger builds the same).
    pub fn key_json(&self, json: &str) -> String {
        let parts: Vec<String> = self.pk.iter().map(|c| format!("{}, r.{c}", quote_literal(unquote(c)))).collect();
        format!("(SELECT pg_catalog.jsonb_build_object({}) FROM {})", parts.join(", "), self.source(json))
    }

    /// The key of table alias `alias`'s row, in the canonical form of `key_json`.
    pub fn key_json_of_alias(&self, alias: &str) -> String {
        let parts: Vec<String> =
            self.pk.iter().map(|c| format!("{}, {alias}.{c}", quote_literal(unquote(c)))).collect();
        format!("pg_catalog.jsonb_build_object({})", parts.join(", "))
    }

    /// The row `rec` (a qualified expression of the table's row type, such as `res.r`)
    /// as a row image: a jsonb object of the image columns' text values, the form
    /// `source` reads.
    ///
    /// Every reference mmr generates is qualified (`x.col`, `res.r`): a bare name would
    /// resolve to a user column of that name before a table alias.
    pub fn to_image(&self, rec: &str) -> String {
        let vals: Vec<String> = self.image_cols().map(|c| format!("({rec}).{}::text", c.ident)).collect();
        format!("CASE WHEN {rec} IS NULL THEN NULL ELSE {} END", self.image_object(&vals))
    }

    /// The row of table alias `alias` as a row image (see `to_image`).
    pub fn image_of_alias(&self, alias: &str) -> String {
        let vals: Vec<String> = self.image_cols().map(|c| format!("{alias}.{}::text", c.ident)).collect();
        self.image_object(&vals)
    }

    fn image_object(&self, vals: &[String]) -> String {
        let keys: Vec<String> = self.image_cols().map(|c| quote_literal(&c.raw)).collect();
        format!("pg_catalog.jsonb_object(ARRAY[{}]::text[], ARRAY[{}]::text[])", keys.join(", "), vals.join(", "))
    }

    /// The whole row of table alias `alias`, as a value of the table's row type
    /// (`ROW(x.*)`: a bare `x` could be a user column named x).
    pub fn whole_row(&self, alias: &str) -> String {
        format!("ROW({alias}.*)::{}", self.name)
    }

    /// The image `json` as a value of the table's row type (mmr and generated columns
    /// NULL), or NULL when `json` is NULL: what resolvers receive.
    pub fn record(&self, json: &str) -> String {
        let vals: Vec<String> =
            self.cols.iter().map(|c| if c.in_image() { Self::value(c, json) } else { "NULL".into() }).collect();
        format!("CASE WHEN {json} IS NULL THEN NULL ELSE ROW({})::{} END", vals.join(", "), self.name)
    }
}

/// The column name inside a quoted identifier.
fn unquote(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => ident.to_string(),
    }
}
