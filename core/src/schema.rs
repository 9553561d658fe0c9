//! Schema changes of replicated tables, as mmr sees them: what a DDL statement did to a
//! table (columns renamed, dropped, added; the table renamed; its key changed), worked
//! out from the table's shape before and after.
//!
//! While a DDL travels, nodes hold tables whose columns differ for a while. Changes
//! name columns by name, so each node remembers the names a DDL took away
//! (`mmr.column_alias`): a renamed column's old name still reaches it, a dropped
//! column's name is ignored. Any other name a change carries is a column this node
//! does not have yet (image.rs finds it): the change waits (set aside) until the DDL
//! that adds it arrives.

use std::collections::BTreeMap;

/// One table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// `"schema"."table"`.
    pub name: String,
    /// Live columns: attribute number and name.
    pub columns: Vec<(i16, String)>,
    /// Primary-key column names, in key order.
    pub pk: Vec<String>,
    /// `relpersistence`: `p` (permanent), `u` (unlogged), `t` (temporary).
    pub persistence: char,
}

/// What a DDL statement did to one table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShapeChange {
    /// (old, new) qualified name.
    pub renamed_to: Option<(String, String)>,
    /// (old, new) column names: same attribute, another name.
    pub renamed_columns: Vec<(String, String)>,
    pub dropped_columns: Vec<String>,
    /// Attribute numbers and names of new columns.
    pub added_columns: Vec<(i16, String)>,
    pub key_changed: bool,
    /// The table is gone.
    pub dropped: bool,
}

impl ShapeChange {
    pub fn is_empty(&self) -> bool {
        *self == ShapeChange::default()
    }
}

/// Compares a table before and after a statement. Columns are matched by attribute
/// number: a renamed column keeps it, a dropped and re-added one gets a new one.
pub fn diff(before: &TableShape, after: Option<&TableShape>) -> ShapeChange {
    let Some(after) = after else {
        return ShapeChange { dropped: true, ..Default::default() };
    };
    let old: BTreeMap<i16, &str> = before.columns.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let new: BTreeMap<i16, &str> = after.columns.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let mut change = ShapeChange {
        renamed_to: (before.name != after.name).then(|| (before.name.clone(), after.name.clone())),
        // Renaming a key column changes the key too: tombstones hold keys by column name.
        key_changed: before.pk != after.pk,
        ..Default::default()
    };
    for (num, name) in &old {
        match new.get(num) {
            None => change.dropped_columns.push(name.to_string()),
            Some(now) if now != name => change.renamed_columns.push((name.to_string(), now.to_string())),
            Some(_) => {}
        }
    }
    for (num, name) in &new {
        if !old.contains_key(num) {
            change.added_columns.push((*num, name.to_string()));
        }
    }
    change
}

/// How many DDL statements of each origin node one member has applied.
pub type DdlHistory = BTreeMap<i32, i64>;

/// Before node `me` runs a new DDL statement, every member must have applied every
/// DDL statement any member has -- except `me`'s own, which reach each member in `me`'s
/// queue order, ahead of the new one. Then the new statement comes after all earlier
/// ones on every node: the group's DDL has one order. Returns the first member that
/// lags: (member, origin, applied there, applied somewhere).
pub fn ddl_lagging(me: i32, histories: &[(String, DdlHistory)]) -> Option<(&str, i32, i64, i64)> {
    let mut most = DdlHistory::new();
    for (_, h) in histories {
        for (origin, n) in h {
            let m = most.entry(*origin).or_insert(0);
            *m = (*m).max(*n);
        }
    }
    for (member, h) in histories {
        for (origin, want) in most.iter().filter(|(o, _)| **o != me) {
            let has = h.get(origin).copied().unwrap_or(0);
            if has < *want {
                return Some((member.as_str(), *origin, has, *want));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, cols: &[(i16, &str)], pk: &[&str]) -> TableShape {
        TableShape {
            name: name.into(),
            columns: cols.iter().map(|(n, c)| (*n, c.to_string())).collect(),
            pk: pk.iter().map(|c| c.to_string()).collect(),
            persistence: 'p',
        }
    }

    #[test]
    fn renames_drops_and_adds_are_told_apart_by_attribute_number() {
        let before = shape("public.t", &[(1, "id"), (2, "a"), (3, "b")], &["id"]);
        let after = shape("public.t", &[(1, "id"), (2, "a2"), (4, "b")], &["id"]);
        let d = diff(&before, Some(&after));
        assert_eq!(d.renamed_columns, vec![("a".to_string(), "a2".to_string())]);
        assert_eq!(d.dropped_columns, vec!["b".to_string()]);
        assert_eq!(d.added_columns, vec![(4, "b".to_string())]);
        assert!(!d.key_changed && d.renamed_to.is_none() && !d.dropped);
    }

    #[test]
    fn a_renamed_key_column_or_another_column_is_a_new_key() {
        let before = shape("public.t", &[(1, "id"), (2, "a")], &["id"]);
        let renamed = shape("public.t", &[(1, "ident"), (2, "a")], &["ident"]);
        assert!(diff(&before, Some(&renamed)).key_changed);
        let rekeyed = shape("public.t", &[(1, "id"), (2, "a")], &["a"]);
        assert!(diff(&before, Some(&rekeyed)).key_changed);
        let unkeyed = shape("public.t", &[(1, "id"), (2, "a")], &[]);
        assert!(diff(&before, Some(&unkeyed)).key_changed);
    }

    #[test]
    fn table_renames_and_drops() {
        let before = shape("public.t", &[(1, "id")], &["id"]);
        let after = shape("app.t2", &[(1, "id")], &["id"]);
        assert_eq!(diff(&before, Some(&after)).renamed_to, Some(("public.t".into(), "app.t2".into())));
        assert!(diff(&before, None).dropped);
        assert!(diff(&before, Some(&before)).is_empty());
    }

    #[test]
    fn ddl_waits_for_members_missing_another_origin_s_statements_but_not_its_own() {
        let h = |pairs: &[(i32, i64)]| pairs.iter().copied().collect::<DdlHistory>();
        let agreed = vec![("a".to_string(), h(&[(1, 3), (2, 1)])), ("b".to_string(), h(&[(1, 2), (2, 1)]))];
        // Node 1's own third statement is still on its way to b: no wait.
        assert_eq!(ddl_lagging(1, &agreed), None);
        // Node 2 must wait: b lacks node 1's third statement.
        assert_eq!(ddl_lagging(2, &agreed), Some(("b", 1, 2, 3)));
        let missing = vec![("a".to_string(), h(&[(3, 1)])), ("b".to_string(), h(&[]))];
        assert_eq!(ddl_lagging(1, &missing), Some(("b", 3, 0, 1)));
    }
}
