//! `agent --config FILE`: a TOML file whose keys are the agent's long flags. Its entries become
//! arguments placed before the command line's own, so clap checks both the same way (one set of
//! rules, one set of messages) and a flag on the command line wins: the `agent` subcommand lets
//! a later flag override an earlier one. Lists (`port = [80, 8000]`) repeat a flag.

use std::{ffi::OsString, path::PathBuf};

use clap::CommandFactory as _;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--config {path}: unknown key {key:?} (keys are the long flags of `slowtrace agent --help`, e.g. threshold = \"500ms\")")]
    UnknownKey { path: PathBuf, key: String },
    #[error("--config {path}: key {key:?}: {why}")]
    Value {
        path: PathBuf,
        key: String,
        why: &'static str,
    },
    #[error("--config needs a file name")]
    Missing,
}

/// `args` (as the process got them) with the config file's entries inserted after `agent`.
/// Unchanged when the subcommand is not `agent` or there is no `--config`.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(at) = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|i| i + 1)
    else {
        return Ok(args);
    };
    if args[at] != "agent" {
        return Ok(args);
    }
    let rest = &args[at + 1..];
    let end = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    let mut path = None;
    for (i, a) in rest[..end].iter().enumerate() {
        let s = a.to_string_lossy();
        if s == "--config" {
            path = Some(rest.get(i + 1).ok_or(ConfigFileError::Missing)?.into());
        } else if let Some(p) = s.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let (mut flags, command) = to_args(&path, &text)?;
    let mut out: Vec<OsString> = args[..=at].to_vec();
    out.append(&mut flags);
    out.extend(rest[..end].iter().cloned());
    match (command, end < rest.len()) {
        // The command line's own `-- CMD` wins over the file's.
        (_, true) => out.extend(rest[end..].iter().cloned()),
        (Some(cmd), false) => {
            out.push("--".into());
            out.extend(cmd.into_iter().map(OsString::from));
        }
        (None, false) => {}
    }
    Ok(out)
}

/// The file's entries as flags, and its `command` (the program to launch), if any.
fn to_args(
    path: &std::path::Path,
    text: &str,
) -> Result<(Vec<OsString>, Option<Vec<String>>), ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
    let cli = crate::cli::Cli::command();
    let agent = cli
        .find_subcommand("agent")
        .expect("the agent subcommand exists");
    let mut out = Vec::new();
    let mut command = None;
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let bad = |why| ConfigFileError::Value {
            path: path.to_owned(),
            key: key.clone(),
            why,
        };
        if flag == "command" {
            let toml::Value::Array(items) = value else {
                return Err(bad("a list of strings, the program and its arguments"));
            };
            let items: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect();
            command = Some(items.ok_or_else(|| bad("a list of strings"))?);
            continue;
        }
        let Some(arg) = agent
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
        else {
            return Err(ConfigFileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            });
        };
        let takes_value = arg.get_action().takes_values();
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in items {
            let text = match v {
                toml::Value::Boolean(b) if !takes_value => {
                    if *b {
                        out.push(format!("--{flag}").into());
                    }
                    continue;
                }
                toml::Value::Boolean(_) => return Err(bad("a value, not true or false")),
                _ if !takes_value => return Err(bad("true or false")),
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return Err(bad("a string, a number, or a list of them")),
            };
            out.push(format!("--{flag}={text}").into());
        }
    }
    Ok((out, command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_entries_become_flags_and_the_command_line_wins() {
        let f = file(
            "port = [8000, 8001]\nthreshold = \"500ms\"\nkeep_query = true\nsample-ratio = 0.5\n\
             otlp-endpoint = \"http://127.0.0.1:4318\"\nmetrics-addr = \"off\"\n",
        );
        let p = f.path().to_str().unwrap();
        let args = expand(os(&[
            "slowtrace",
            "agent",
            "--config",
            p,
            "--threshold",
            "2s",
        ]))
        .unwrap();
        let cli = crate::cli::Cli::try_parse_from(&args).unwrap();
        let crate::cli::Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.trace.targets.ports, vec![8000, 8001]);
        assert_eq!(a.trace.threshold, std::time::Duration::from_secs(2));
        assert!(a.trace.keep_query);
        assert_eq!(a.export.sample_ratio, 0.5);
        assert_eq!(a.export.metrics_addr, "off");
        assert_eq!(
            a.export.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
    }

    #[test]
    fn a_command_in_the_file_is_launched_unless_the_command_line_has_one() {
        let f = file("command = [\"gunicorn\", \"app:app\"]\n");
        let p = f.path().to_str().unwrap();
        let args = expand(os(&["slowtrace", "-v", "agent", "--config", p])).unwrap();
        assert_eq!(
            &args[args.len() - 3..],
            &os(&["--", "gunicorn", "app:app"])[..]
        );
        let args = expand(os(&["slowtrace", "agent", "--config", p, "--", "nginx"])).unwrap();
        assert_eq!(args.last().unwrap(), "nginx");
        assert!(!args.iter().any(|a| a == "gunicorn"));
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/deploy/agent.toml");
        let args = expand(os(&["slowtrace", "agent", "--config", p])).unwrap();
        let cli = crate::cli::Cli::try_parse_from(&args).unwrap();
        let crate::cli::Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.trace.targets.ports, vec![8000]);
        assert_eq!(a.export.sample_ratio, 0.05);
    }

    #[test]
    fn bad_files_are_one_clear_error() {
        let f = file("thresold = \"1s\"\n");
        let p = f.path().to_str().unwrap();
        let e = expand(os(&["slowtrace", "agent", "--config", p])).unwrap_err();
        assert!(e.to_string().contains("unknown key \"thresold\""), "{e}");
        let f = file("keep-query = \"yes\"\n");
        let e = expand(os(&[
            "slowtrace",
            "agent",
            "--config",
            f.path().to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(
            e.to_string().ends_with("key \"keep-query\": true or false"),
            "{e}"
        );
        let f = file("port = [\n");
        let e = expand(os(&[
            "slowtrace",
            "agent",
            "--config",
            f.path().to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("--config "), "{e}");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        let e = expand(os(&["slowtrace", "agent", "--config", "/nonexistent.toml"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--config /nonexistent.toml: No such file or directory (os error 2)"
        );
        // Other subcommands are left alone.
        let args = os(&["slowtrace", "record", "--config", "x"]);
        assert_eq!(expand(args.clone()).unwrap(), args);
    }
}
