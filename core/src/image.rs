//! A row image -- the JSON object keyed by column name that the capture trigger writes
//! -- read as the text of each local column, exactly as SQL's `image ->> 'col'` reads
//! it, for apply paths that hand values to PostgreSQL without its JSON functions (the
//! set-wise insert, which feeds COPY). Each value then goes through the column type's
//! input function, as `(image ->> 'col')::type` does.
//!
//! Which name fills a column follows `rowsql::Shape::value`: the column's own name,
//! else a former name (renamed by replicated DDL), else the column's fill (what ADD
//! COLUMN gave existing rows). Names of dropped columns are ignored; any other name is
//! a column this node does not have yet.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast hash for column names (every name of every change is looked up; SipHash,
/// the default, was a tenth of reading a row image). Not DoS-resistant, and need not
/// be: the names are the table's own.
#[derive(Default, Clone, Copy)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Names = HashMap<String, Option<(usize, usize)>, BuildHasherDefault<NameHasher>>;

/// The columns an image is read into, in order.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Every name a change may carry: the column it fills and its rank (0 the column's
    /// own name, then its former names in order; a lower rank wins), or `None` for a
    /// dropped column.
    names: Names,
    /// Per column, the text a change that lacks it gives it (`None`: NULL).
    fills: Vec<Option<String>>,
    /// Names it does not know are ignored, not an error (a layout of some columns only).
    lenient: bool,
}

/// One column of a layout.
pub struct LayoutColumn<'a> {
    pub name: &'a str,
    pub former_names: &'a [String],
    pub fill: Option<&'a str>,
}

/// An image that cannot be read into a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// It names a column this node does not have.
    UnknownColumn(String),
    /// It is not a JSON object.
    Malformed(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::UnknownColumn(c) => write!(f, "the change has a column \"{c}\" this node does not have"),
            ImageError::Malformed(m) => write!(f, "row image: {m}"),
        }
    }
}

impl Layout {
    pub fn new<'a>(columns: impl IntoIterator<Item = LayoutColumn<'a>>, dropped: &[String]) -> Layout {
        let mut layout = Layout::default();
        for name in dropped {
            layout.names.insert(name.clone(), None);
        }
        for (i, c) in columns.into_iter().enumerate() {
            for (rank, name) in std::iter::once(c.name).chain(c.former_names.iter().map(String::as_str)).enumerate() {
                layout.names.insert(name.to_string(), Some((i, rank)));
            }
            layout.fills.push(c.fill.map(String::from));
        }
        layout
    }

    /// The same layout, ignoring names it does not know: for reading some columns only
    /// (the key of a deleted row, whose image may name columns added since).
    pub fn lenient(self) -> Layout {
        Layout { lenient: true, ..self }
    }

    pub fn len(&self) -> usize {
        self.fills.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fills.is_empty()
    }

    /// The first name in the image `image` that is no column of the layout (nor a former
    /// or dropped one), reading the names only.
    pub fn unknown_column(&self, image: &str) -> Result<Option<String>, ImageError> {
        struct Keys<'l>(&'l Layout);
        impl<'de> Visitor<'de> for Keys<'_> {
            type Value = Option<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row image (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    map.next_value::<IgnoredAny>()?;
                    if found.is_none() && !self.0.names.contains_key(k.as_ref()) {
                        found = Some(k.into_owned());
                    }
                }
                Ok(found)
            }
        }
        let mut de = serde_json::Deserializer::from_str(image);
        let found = de.deserialize_map(Keys(self)).map_err(|e| ImageError::Malformed(e.to_string()))?;
        de.end().map_err(|e| ImageError::Malformed(e.to_string()))?;
        Ok(found)
    }

    /// The text of each column of the image `image` (`None`: SQL NULL).
    pub fn values<'a>(&'a self, image: &'a str) -> Result<Vec<Option<Cow<'a, str>>>, ImageError> {
        let mut out =
            Values { layout: self, values: vec![None; self.len()], ranks: vec![usize::MAX; self.len()], unknown: None };
        let mut de = serde_json::Deserializer::from_str(image);
        if let Err(e) = (&mut out).deserialize(&mut de) {
            return Err(match out.unknown {
                Some(column) => ImageError::UnknownColumn(column),
                None => ImageError::Malformed(e.to_string()),
            });
        }
        de.end().map_err(|e| ImageError::Malformed(e.to_string()))?;
        Ok(out
            .values
            .into_iter()
            .zip(out.ranks)
            .zip(&self.fills)
            .map(|((v, rank), fill)| if rank == usize::MAX { fill.as_deref().map(Cow::Borrowed) } else { v })
            .collect())
    }
}

struct Values<'l, 'a> {
    layout: &'l Layout,
    values: Vec<Option<Cow<'a, str>>>,
    /// The rank of the name each column was read from (`usize::MAX`: not read).
    ranks: Vec<usize>,
    /// The first name the layout does not know.
    unknown: Option<String>,
}

impl<'de> DeserializeSeed<'de> for &mut Values<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Values<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row image (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let raw: &'de RawValue = map.next_value()?;
            match self.layout.names.get(key.as_ref()) {
                None if self.layout.lenient => {}
                None => {
                    self.unknown = Some(key.into_owned());
                    return Err(A::Error::custom("unknown column"));
                }
                Some(None) => {}
                // A later duplicate of a name replaces the earlier value, as in jsonb.
                Some(&Some((col, rank))) if rank <= self.ranks[col] => {
                    self.values[col] = scalar_text(raw.get()).map_err(A::Error::custom)?;
                    self.ranks[col] = rank;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The text `->>` gives for a JSON value: a string's contents, a number's digits
/// (jsonb keeps numbers as numeric, so a negative zero reads as zero), `true`/`false`,
/// and NULL for JSON null. Arrays and objects (which the capture trigger never writes
/// as values) read as their JSON text.
fn scalar_text(raw: &str) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    Ok(match raw.as_bytes().first() {
        Some(b'"') => Some(serde_json::from_str::<Cow<'_, str>>(raw)?),
        Some(b'n') => None,
        Some(b'-') if raw.bytes().skip(1).take_while(|b| *b != b'e' && *b != b'E').all(|b| b == b'0' || b == b'.') => {
            Some(Cow::Borrowed(&raw[1..]))
        }
        _ => Some(Cow::Borrowed(raw)),
    })
}

/// Appends one field of COPY's text format: `\N` for NULL, else the text with
/// backslash, newline, carriage return and tab escaped.
pub fn push_copy_field(buf: &mut String, value: Option<&str>) {
    let Some(s) = value else {
        buf.push_str("\\N");
        return;
    };
    let mut rest = s;
    while let Some(i) = rest.find(['\\', '\n', '\r', '\t']) {
        buf.push_str(&rest[..i]);
        buf.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        });
        rest = &rest[i + 1..];
    }
    buf.push_str(rest);
}

/// A hash of a key's values as `Layout::values` reads them (`None`: NULL): the same on
/// every side that reads the same key from a row image. FNV-1a over each value
/// prefixed by its length (NULL by a marker), so ("ab", "c") and ("a", "bc") differ.
pub fn key_hash(values: &[Option<Cow<'_, str>>]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    for v in values {
        match v {
            Some(text) => {
                (text.len() as u32).to_le_bytes().into_iter().for_each(&mut eat);
                text.bytes().for_each(&mut eat);
            }
            None => [0xff; 4].into_iter().for_each(&mut eat),
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let olds = vec!["old_b".to_string(), "older_b".to_string()];
        Layout::new(
            [
                LayoutColumn { name: "id", former_names: &[], fill: None },
                LayoutColumn { name: "b", former_names: &olds, fill: None },
                LayoutColumn { name: "c", former_names: &[], fill: Some("7") },
            ],
            &["gone".to_string()],
        )
    }

    fn texts(v: Vec<Option<Cow<'_, str>>>) -> Vec<Option<String>> {
        v.into_iter().map(|v| v.map(Cow::into_owned)).collect()
    }

    #[test]
    fn values_read_as_the_arrow_operator_reads_them() {
        let l = layout();
        let v = l.values(r#"{"id":-12,"b":"a\"b\\c\n\u00e9","c":null}"#).unwrap();
        assert_eq!(texts(v), vec![Some("-12".into()), Some("a\"b\\c\né".into()), None]);
        let v = l.values(r#"{"id":1.50,"b":true,"c":-0}"#).unwrap();
        assert_eq!(texts(v), vec![Some("1.50".into()), Some("true".into()), Some("0".into())]);
        let v = l.values(r#"{"id":-0.0e5,"b":-0.5,"c":[1, 2]}"#).unwrap();
        assert_eq!(texts(v), vec![Some("0.0e5".into()), Some("-0.5".into()), Some("[1, 2]".into())]);
    }

    #[test]
    fn missing_columns_take_their_fill_and_former_names_count() {
        let l = layout();
        let v = l.values(r#"{"older_b":"x","id":1}"#).unwrap();
        assert_eq!(texts(v), vec![Some("1".into()), Some("x".into()), Some("7".into())]);
        // The column's own name wins over former ones, in any order; a former name over
        // an older one.
        let v = l.values(r#"{"b":"now","old_b":"then","id":1}"#).unwrap();
        assert_eq!(texts(v)[1], Some("now".into()));
        let v = l.values(r#"{"older_b":"oldest","old_b":"then","id":1}"#).unwrap();
        assert_eq!(texts(v)[1], Some("then".into()));
        // A null is a value, not a missing column.
        let v = l.values(r#"{"id":1,"c":null,"gone":5}"#).unwrap();
        assert_eq!(texts(v), vec![Some("1".into()), None, None]);
    }

    #[test]
    fn unknown_columns_and_malformed_images_are_errors() {
        let l = layout();
        assert_eq!(l.values(r#"{"id":1,"new col":2}"#), Err(ImageError::UnknownColumn("new col".into())));
        assert!(matches!(l.values("[1]"), Err(ImageError::Malformed(_))));
        assert!(matches!(l.values(r#"{"id":"#), Err(ImageError::Malformed(_))));
        assert!(matches!(l.values(r#"{"id":1} x"#), Err(ImageError::Malformed(_))));
        assert_eq!(l.unknown_column(r#"{"id":1,"gone":2,"older_b":3}"#), Ok(None));
        assert_eq!(l.unknown_column(r#"{"id":1,"x":{"y":[1]},"z":2}"#), Ok(Some("x".into())));
        assert!(matches!(l.unknown_column("[1]"), Err(ImageError::Malformed(_))));
        let l = l.lenient();
        assert_eq!(texts(l.values(r#"{"id":1,"new col":2}"#).unwrap())[0], Some("1".into()));
        assert!(matches!(l.values("[1]"), Err(ImageError::Malformed(_))));
    }

    #[test]
    fn copy_fields_escape_what_copy_reads_specially() {
        let mut b = String::new();
        push_copy_field(&mut b, Some("a\tb\\c\nd\re\\.f"));
        b.push('\t');
        push_copy_field(&mut b, None);
        b.push('\t');
        push_copy_field(&mut b, Some(""));
        assert_eq!(b, "a\\tb\\\\c\\nd\\re\\\\.f\t\\N\t");
    }

    #[test]
    fn key_hashes_tell_values_apart_and_ignore_how_the_image_spells_them() {
        let layout =
            Layout::new(["a", "b"].map(|name| LayoutColumn { name, former_names: &[], fill: None }), &[]).lenient();
        let hash = |image: &str| key_hash(&layout.values(image).unwrap());
        assert_eq!(hash(r#"{"a": 37, "b": "x", "c": 1}"#), hash(r#"{"b":"x","a":37}"#));
        assert_eq!(hash(r#"{"a": "ab", "b": "c"}"#), hash(r#"{"b": "c", "a": "a\u0062"}"#));
        assert_ne!(hash(r#"{"a": "ab", "b": "c"}"#), hash(r#"{"a": "a", "b": "bc"}"#));
        assert_ne!(hash(r#"{"a": "", "b": null}"#), hash(r#"{"a": null, "b": ""}"#));
        assert_ne!(hash(r#"{"a": 1, "b": "x"}"#), hash(r#"{"a": 2, "b": "x"}"#));
    }
}
