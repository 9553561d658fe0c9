//! Rendering libpq connection strings (parsing is libpq's job: `PQconninfoParse`).

/// Renders `key=value` pairs as a libpq connection string, quoting values that need it
/// and replacing the password with `********` when `mask_password` is set.
pub fn render(pairs: &[(String, String)], mask_password: bool) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = if mask_password && k == "password" { "********" } else { v.as_str() };
            format!("{k}={}", quote(v))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a value the way libpq reads it back: single quotes around values that are
/// empty or hold whitespace, quotes or backslashes; `'` and `\` escaped with `\`.
pub fn quote(v: &str) -> String {
    let plain = !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn masks_password_and_quotes() {
        let pairs = vec![p("host", "db1"), p("password", "s3cr3t"), p("application_name", "a b'c")];
        assert_eq!(render(&pairs, true), r"host=db1 password=******** application_name='a b\'c'");
        assert_eq!(render(&pairs, false), r"host=db1 password=s3cr3t application_name='a b\'c'");
        assert_eq!(quote(""), "''");
    }
}
