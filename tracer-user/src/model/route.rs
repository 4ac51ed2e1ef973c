//! Endpoint names: method plus the path with its variable parts collapsed, so `/users/17` and
//! `/users/42` are one row.

/// Collapse numeric, UUID and long hex segments; drop the query string.
pub fn normalize(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(classify(seg).unwrap_or(seg));
    }
    out
}

fn classify(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        return None;
    }
    if seg.bytes().all(|b| b.is_ascii_digit()) {
        return Some(":int");
    }
    if is_uuid(seg) {
        return Some(":uuid");
    }
    // Hashes, object ids, tokens: 16+ hex digits with at least one digit (so words like
    // "deadbeefcafebabe" with no digits stay readable if they are real route names).
    if seg.len() >= 16
        && seg.bytes().all(|b| b.is_ascii_hexdigit())
        && seg.bytes().any(|b| b.is_ascii_digit())
    {
        return Some(":hex");
    }
    None
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Replace the query string, which often carries tokens and personal data.
pub fn redact_query(target: &str) -> String {
    match target.split_once('?') {
        Some((path, _)) => format!("{path}?[redacted]"),
        None => target.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_ids() {
        assert_eq!(normalize("/users/42/posts/7"), "/users/:int/posts/:int");
        assert_eq!(
            normalize("/o/123e4567-e89b-12d3-a456-426614174000/x"),
            "/o/:uuid/x"
        );
        assert_eq!(normalize("/blob/5f2b1c9e8d7a6b5c4d3e2f1a"), "/blob/:hex");
        assert_eq!(normalize("/sleep?ms=300"), "/sleep");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn keeps_words_and_short_hex() {
        assert_eq!(normalize("/api/v2/cafe/deadbeef"), "/api/v2/cafe/deadbeef");
        assert_eq!(normalize("/static/app.css"), "/static/app.css");
        assert_eq!(normalize("/a//b/"), "/a//b/");
    }

    #[test]
    fn redacts_queries() {
        assert_eq!(redact_query("/s?token=abc&q=1"), "/s?[redacted]");
        assert_eq!(redact_query("/plain"), "/plain");
    }
}
