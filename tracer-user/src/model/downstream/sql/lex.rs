//! The SQL tokenizer: literals, placeholders, quoted identifiers and operators as the two
//! dialects write them, with comments and whitespace reduced to a `space_before` flag.
//!
//! Every token ends on an ASCII byte or at the end of input, so its slice is always on a char
//! boundary (non-ASCII bytes only ever appear inside words and quoted runs).

use super::Dialect;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Keyword or plain identifier, copied as written.
    Word,
    /// Quoted identifier (`"col2"`, `` `t` ``), copied as written.
    Ident,
    /// Literal or placeholder, printed `?`.
    Value,
    /// Operator run (`=`, `<>`, `->>`); never includes a `-`/`+` after its first byte, so
    /// `=-1` is `=` and a negative number.
    Op,
    Open,
    Close,
    Comma,
    /// Any other single byte: `.`, `:`, `;`, `[`, a lone `$`.
    Other,
    /// A collapsed `(...)` list.
    List,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Tok<'a> {
    pub(super) kind: Kind,
    pub(super) text: &'a str,
    /// Whitespace or a comment came before it.
    pub(super) space_before: bool,
    /// Byte offset just after it in the input.
    pub(super) end: usize,
}

pub(super) fn tokenize(s: &str, d: Dialect) -> Vec<Tok<'_>> {
    let b = s.as_bytes();
    let mut toks: Vec<Tok<'_>> = Vec::new();
    let (mut i, mut space) = (0, false);
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied().unwrap_or(0);
        if c.is_ascii_whitespace() {
            (i, space) = (i + 1, true);
            continue;
        }
        if (c == b'-' && next == b'-') || (c == b'#' && d == Dialect::Mysql) {
            i = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p);
            space = true;
            continue;
        }
        if c == b'/' && next == b'*' {
            i = find(b, i + 2, b"*/").map_or(b.len(), |p| p + 2);
            space = true;
            continue;
        }
        let start = i;
        let prev = toks.last().map(|t| t.kind);
        let kind = match c {
            b'\'' => {
                i = skip_quoted(b, i, b'\'', d == Dialect::Mysql);
                Kind::Value
            }
            b'"' if d == Dialect::Mysql => {
                i = skip_quoted(b, i, b'"', true);
                Kind::Value
            }
            b'"' | b'`' => {
                i = skip_quoted(b, i, c, false);
                Kind::Ident
            }
            b'$' => {
                i = dollar(b, i);
                if i == start + 1 {
                    Kind::Other
                } else {
                    Kind::Value
                }
            }
            b'?' => {
                i += 1;
                Kind::Value
            }
            b'%' if next == b's' => {
                i += 2;
                Kind::Value
            }
            b'%' if next == b'(' && find(b, i, b")s").is_some() => {
                i = find(b, i, b")s").map_or(b.len(), |p| p + 2);
                Kind::Value
            }
            b'0'..=b'9' => {
                i = number(b, i);
                Kind::Value
            }
            b'.' if next.is_ascii_digit() && !matches!(prev, Some(Kind::Word | Kind::Ident)) => {
                i = number(b, i + 1);
                Kind::Value
            }
            b'-' | b'+'
                if (next.is_ascii_digit() || next == b'.' && digit_at(b, i + 2))
                    && matches!(prev, None | Some(Kind::Op | Kind::Open | Kind::Comma)) =>
            {
                i = number(b, i + 1);
                Kind::Value
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || !c.is_ascii() => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || b"_$".contains(&b[i]) || !b[i].is_ascii())
                {
                    i += 1;
                }
                let w = &b[start..i];
                // String prefixes: E'…' (backslash escapes), B'…', X'…', N'…', MySQL _charset'…'.
                if b.get(i) == Some(&b'\'')
                    && (w.len() == 1 && b"eEbBxXnN".contains(&w[0]) || w[0] == b'_')
                {
                    let backslash = d == Dialect::Mysql || w.eq_ignore_ascii_case(b"e");
                    i = skip_quoted(b, i, b'\'', backslash);
                    Kind::Value
                } else {
                    Kind::Word
                }
            }
            b'(' => {
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            _ if b"+-*/<>=~!@#%^&|".contains(&c) => {
                i += 1;
                // `-` and `+` never continue a run: `=-1` is `=` then the number `-1`.
                while i < b.len() && b"*/<>=~!@#%^&|".contains(&b[i]) {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        break;
                    }
                    i += 1;
                }
                Kind::Op
            }
            _ => {
                i += 1;
                Kind::Other
            }
        };
        toks.push(Tok {
            kind,
            text: &s[start..i],
            space_before: space,
            end: i,
        });
        space = false;
    }
    toks
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

fn find(b: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| from + p)
}

/// Index after the quoted run opening at `i` (`qq` doubles the quote; the end of input if open).
fn skip_quoted(b: &[u8], i: usize, q: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
        } else if b[j] == q {
            if b.get(j + 1) != Some(&q) {
                return j + 1;
            }
            j += 2;
        } else {
            j += 1;
        }
    }
    b.len()
}

/// `$1` or `$tag$…$tag$` at `i`: the index after it, or `i + 1` for a lone `$`.
fn dollar(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        return j;
    }
    while b
        .get(j)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return i + 1;
    }
    let tag = &b[i..=j];
    find(b, j + 1, tag).map_or(b.len(), |p| p + tag.len())
}

/// Index after a number starting at `i`: digits, `.`, letters (`0x1F`, `1e5`, `1_000`) and the
/// sign of an exponent.
fn number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let c = b[i];
        let exp_sign = (c == b'-' || c == b'+')
            && matches!(b[i - 1], b'e' | b'E')
            && b.get(i + 1).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || exp_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}
