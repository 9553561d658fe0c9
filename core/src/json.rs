//! Writing JSON text by hand, for the capture trigger's row encoding.

use std::fmt::Write;

/// Appends `s` as a JSON string literal.
pub fn push_json_string(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

pub fn push_float(buf: &mut String, v: f64, display: impl std::fmt::Display, exp: impl std::fmt::LowerExp) {
    if v.is_nan() {
        buf.push_str("\"NaN\"");
    } else if v == 0.0 && v.is_sign_negative() {
        // As a string: a JSON number -0 reads as 0 in jsonb (a numeric), and peers read
        // values through jsonb or as `->>` would (image.rs).
        buf.push_str("\"-0\"");
    } else if v.is_infinite() {
        buf.push_str(if v > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else if v == 0.0 || (1e-6..1e16).contains(&v.abs()) {
        // Rust prints the shortest decimal that reads back to the same float.
        let _ = write!(buf, "{display}");
    } else {
        let _ = write!(buf, "{exp:e}");
    }
}

/// Whether PostgreSQL's text output of a numeric is also a JSON number.
pub fn json_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    digits.starts_with(|c: char| c.is_ascii_digit()) && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut b = String::new();
        push_json_string(&mut b, "a\"b\\c\nd\u{1}é");
        assert_eq!(b, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn floats_round_trip_and_non_finite_are_strings() {
        for v in [0.1f64, 1.0 / 3.0, 1e300, -2.5e-12, 123456.789, 0.0] {
            let mut b = String::new();
            push_float(&mut b, v, v, v);
            assert_eq!(b.parse::<f64>().unwrap(), v, "{b}");
        }
        let mut b = String::new();
        push_float(&mut b, f64::NAN, f64::NAN, f64::NAN);
        assert_eq!(b, "\"NaN\"");
        let mut b = String::new();
        push_float(&mut b, -0.0, -0.0, -0.0);
        assert_eq!(b, "\"-0\"", "a negative zero keeps its sign");
    }

    #[test]
    fn numeric_output_as_json_number() {
        assert!(json_number("12.50"));
        assert!(json_number("-0.1"));
        assert!(!json_number("NaN"));
        assert!(!json_number("Infinity"));
    }
}
