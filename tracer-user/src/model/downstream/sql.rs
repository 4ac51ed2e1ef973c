//! SQL fingerprints: the statement with its values taken out, so `WHERE id = 42`, `WHERE id = 7`
//! and `WHERE id = $1` are one statement and an N+1 shows as one fingerprint with a count.
//!
//! One tokenizer pass, then one emit pass. Literals (strings with `''` escapes, `E'…'`, `X'…'`,
//! `$tag$…$tag$`, numbers not inside identifiers) and placeholders (`$1`, `?`, `%s`,
//! `%(name)s`) become `?`; `IN (?, ?, ?)` becomes `IN (...)`; `VALUES (…), (…)` keeps its first
//! tuple. Comments and whitespace collapse to one space (none after `(` or before `)` and `,`; one
//! after `,`). Identifiers and keywords are copied unchanged, quoted ones included.
//!
//! Cut input (`truncated`): a trailing word, quoted identifier or operator that touches the end
//! may be partial, so it is dropped, and the fingerprint ends with `…`; an unterminated literal is
//! still `?`. This keeps fingerprints of the same long statement equal whatever the cut position.

use super::{bound, mark_truncated, FINGERPRINT_MAX};
use lex::{tokenize, Kind, Tok};

mod lex;

/// Where the dialects differ: MySQL strings take backslash escapes, `"…"` is a string and `#`
/// starts a comment; in Postgres `"…"` is an identifier and `#` an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// The fingerprint of `sql`, at most `FINGERPRINT_MAX` bytes.
pub fn fingerprint(sql: &str, dialect: Dialect, truncated: bool) -> String {
    let mut toks = tokenize(sql, dialect);
    if truncated {
        let partial = toks.last().is_some_and(|t| {
            t.end == sql.len() && matches!(t.kind, Kind::Word | Kind::Ident | Kind::Op)
        });
        if partial {
            toks.pop();
        }
    }
    let mut out = String::with_capacity(sql.len().min(FINGERPRINT_MAX) + 4);
    let mut prev = None;
    let mut values_end = None;
    let mut i = 0;
    while i < toks.len() && out.len() <= FINGERPRINT_MAX {
        if values_end == Some(i) {
            // Rows after the first: `, (…)` repeated, the last one possibly cut.
            while toks.get(i).is_some_and(|t| t.kind == Kind::Comma)
                && toks.get(i + 1).is_some_and(|t| t.kind == Kind::Open)
            {
                i = group_end(&toks, i + 1);
            }
            values_end = None;
            continue;
        }
        let t = toks[i];
        push(&mut out, &mut prev, &t);
        i += 1;
        if t.kind != Kind::Word {
            continue;
        }
        if t.text.eq_ignore_ascii_case("in") {
            if let Some(n) = value_list(&toks[i..]) {
                let list = Tok {
                    kind: Kind::List,
                    text: "(...)",
                    ..toks[i]
                };
                push(&mut out, &mut prev, &list);
                i += n;
            }
        } else if is_values(t.text) && toks.get(i).is_some_and(|t| t.kind == Kind::Open) {
            values_end = Some(group_end(&toks, i));
        }
    }
    if truncated {
        mark_truncated(&mut out);
    } else {
        bound(&mut out);
    }
    out
}

fn is_values(word: &str) -> bool {
    word.eq_ignore_ascii_case("values") || word.eq_ignore_ascii_case("value")
}

fn push(out: &mut String, prev: &mut Option<Kind>, t: &Tok<'_>) {
    let space = (t.space_before || *prev == Some(Kind::Comma))
        && *prev != Some(Kind::Open)
        && !matches!(t.kind, Kind::Close | Kind::Comma);
    if space && !out.is_empty() {
        out.push(' ');
    }
    out.push_str(if t.kind == Kind::Value { "?" } else { t.text });
    *prev = Some(t.kind);
}

/// Tokens taken by `(?, ?, …)` at the start of `toks` (the list may run to the end when cut).
fn value_list(toks: &[Tok<'_>]) -> Option<usize> {
    if toks.first()?.kind != Kind::Open {
        return None;
    }
    for (n, t) in toks.iter().enumerate().skip(1) {
        let want = if n % 2 == 1 { Kind::Value } else { Kind::Comma };
        if t.kind == Kind::Close && n % 2 == 0 {
            return Some(n + 1);
        }
        if t.kind != want {
            return None;
        }
    }
    (toks.len() > 1).then_some(toks.len())
}

/// Index after the parenthesized group opening at `open` (the end of `toks` if never closed).
fn group_end(toks: &[Tok<'_>], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t.kind {
            Kind::Open => depth += 1,
            Kind::Close => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

#[cfg(test)]
mod tests;
