//! `--handler BINARY:PATTERN`: which functions of a native binary or shared library to time.
//! PATTERN is a shell glob over demangled names (Rust, C++ and plain C), e.g.
//! `./server:*handle_request*` or `libapp.so:app::http::*`.

use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSymbol as _, SymbolKind};

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("--handler {0}: expected BINARY:PATTERN, e.g. ./server:*handle_request*")]
    Syntax(String),
    #[error("--handler {spec}: cannot read {path}: {source}")]
    Read {
        spec: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--handler {spec}: {path} is not an ELF file with symbols: {source}")]
    Elf {
        spec: String,
        path: PathBuf,
        source: object::Error,
    },
    #[error("--handler {spec}: bad pattern: {source}")]
    Pattern {
        spec: String,
        source: glob::PatternError,
    },
    #[error("--handler {spec}: no function matches in {path}{}", suggestions(.closest))]
    NoMatch {
        spec: String,
        path: PathBuf,
        closest: Vec<String>,
    },
}

fn suggestions(closest: &[String]) -> String {
    if closest.is_empty() {
        String::new()
    } else {
        format!("; closest: {}", closest.join(", "))
    }
}

/// One function to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// Binary or library holding it.
    pub path: PathBuf,
    /// Symbol as in the ELF (what the uprobe attaches to).
    pub symbol: String,
    /// Demangled, for people.
    pub name: String,
}

/// Parse `BINARY:PATTERN`. The last `:` splits, so C++/Rust patterns keep their `::`…
/// except that a `::` is never the split point.
pub fn parse_spec(spec: &str) -> Result<(PathBuf, String), HandlerError> {
    let bytes = spec.as_bytes();
    let split = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
    });
    match split {
        Some(i) if i > 0 && i + 1 < spec.len() => {
            Ok((PathBuf::from(&spec[..i]), spec[i + 1..].to_owned()))
        }
        _ => Err(HandlerError::Syntax(spec.to_owned())),
    }
}

pub fn demangle(sym: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(sym) {
        // Without the hash suffix: `app::handle::h1234abcd` → `app::handle`.
        return format!("{d:#}");
    }
    if sym.starts_with("_Z") {
        if let Ok(d) = cpp_demangle::Symbol::new(sym) {
            if let Ok(s) = d.demangle() {
                return s;
            }
        }
    }
    sym.to_owned()
}

/// Functions of `path` whose demangled name matches the glob, without duplicates.
pub fn resolve(spec: &str) -> Result<Vec<Handler>, HandlerError> {
    let (path, pattern) = parse_spec(spec)?;
    let data = std::fs::read(&path).map_err(|source| HandlerError::Read {
        spec: spec.to_owned(),
        path: path.clone(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|source| HandlerError::Elf {
        spec: spec.to_owned(),
        path: path.clone(),
        source,
    })?;
    let functions: Vec<(String, String)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| s.name().ok().map(|n| (n.to_owned(), demangle(n))))
        .collect();
    let glob = glob::Pattern::new(&pattern).map_err(|source| HandlerError::Pattern {
        spec: spec.to_owned(),
        source,
    })?;
    let mut out: Vec<Handler> = functions
        .iter()
        .filter(|(_, name)| glob.matches(name))
        .map(|(sym, name)| Handler {
            path: absolute(&path),
            symbol: sym.clone(),
            name: name.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    out.dedup_by(|a, b| a.symbol == b.symbol);
    if out.is_empty() {
        return Err(HandlerError::NoMatch {
            spec: spec.to_owned(),
            path,
            closest: closest(&pattern, functions.iter().map(|(_, n)| n.as_str())),
        });
    }
    Ok(out)
}

/// The five names most like the pattern (its literal parts), for the error message.
fn closest<'a>(pattern: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let literal: String = pattern
        .chars()
        .filter(|c| !matches!(c, '*' | '?' | '[' | ']'))
        .collect();
    let mut scored: Vec<(f64, &str)> = names
        .filter(|n| !n.starts_with('_') || literal.starts_with('_'))
        .map(|n| {
            let contains = if n.contains(&literal) { 1.0 } else { 0.0 };
            (contains + strsim::jaro_winkler(&literal, n), n)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(5)
        .map(|(_, n)| n.to_owned())
        .collect()
}

/// Binary path as given, made absolute (uprobes attach by path; /proc/PID/exe also works).
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("./srv:*handle*").unwrap(),
            ("./srv".into(), "*handle*".into())
        );
        assert_eq!(
            parse_spec("/x/libapp.so:app::http::*").unwrap(),
            ("/x/libapp.so".into(), "app::http::*".into())
        );
        assert!(parse_spec("nocolon").is_err());
        assert!(parse_spec("bin:").is_err());
        assert!(parse_spec(":pat").is_err());
    }

    // Named by `resolves_own_test_binary_and_suggests`: it must stay a function of its own in
    // the binary, whatever the optimiser would inline.
    #[test]
    #[inline(never)]
    fn demangles_rust_and_cpp() {
        assert_eq!(
            demangle("_ZN3app6handle17h0123456789abcdefE"),
            "app::handle"
        );
        assert_eq!(demangle("_ZN3srv7Handler5serveEv"), "srv::Handler::serve()");
        assert_eq!(demangle("handle_request"), "handle_request");
    }

    #[test]
    fn resolves_own_test_binary_and_suggests() {
        let me = std::env::current_exe().unwrap();
        let spec = format!("{}:*handlers*tests*demangles_rust_and_cpp*", me.display());
        let found = resolve(&spec).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].name.ends_with("demangles_rust_and_cpp"));
        let err = resolve(&format!("{}:*demangles_rust_and_cp_typo*", me.display())).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no function matches") && msg.contains("closest"),
            "{msg}"
        );
    }
}
