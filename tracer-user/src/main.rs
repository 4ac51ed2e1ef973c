//! slowtrace: the binary. Thin glue over the library (lib.rs), where each stage of the pipeline
//! lives in its own module: probes (kernel side) → events (decoding) → model (requests, stats) →
//! sinks (files, summary).

use slowtrace::{cli, config, config_file, doctor, exit, headless, one_line, python, record, tui};

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // A panic on the main thread is a bug: exit code 70 after the hook's one line.
    std::panic::catch_unwind(run).unwrap_or(ExitCode::from(exit::SOFTWARE))
}

fn run() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // -v anywhere before `--` asks for the details (a panic's backtrace, the error's debug form).
    let verbose = args
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--verbose" || a.to_str().is_some_and(is_short_verbose));
    one_line_panics(verbose);
    let args = match config_file::expand(args) {
        Ok(a) => a,
        Err(err) => {
            eprintln!("slowtrace: error: {}", exit::bare(&err.to_string()));
            return ExitCode::from(exit::code(&err.into()));
        }
    };
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let code = exit::clap_code(&err);
            if code == 0 {
                // --help, --version: clap prints them.
                let _ = err.print();
            } else {
                eprintln!("slowtrace: error: {}", exit::clap_line(&err));
            }
            return ExitCode::from(code);
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        cli::Command::Record(args) => config::RecordConfig::from_args(&args)
            .map_err(anyhow::Error::from)
            .and_then(record::run),
        cli::Command::Top(args) => config::TopConfig::from_args(&args)
            .map_err(anyhow::Error::from)
            .and_then(tui::run),
        cli::Command::PyStack(args) => python::cli_main(args),
        cli::Command::Agent(args) => {
            config::HeadlessConfig::from_args(&args, |k| std::env::var(k).ok())
                .map_err(anyhow::Error::from)
                .and_then(headless::run)
        }
        cli::Command::Doctor(args) => doctor::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One clear line (plus causes), not a backtrace; -v adds the debug form.
            eprintln!("slowtrace: error: {}", one_line(&err));
            if cli.verbose > 0 {
                eprintln!("{err:?}");
            }
            ExitCode::from(exit::code(&err))
        }
    }
}

/// `-v`, `-vv`, or a cluster of short flags holding `v`.
fn is_short_verbose(a: &str) -> bool {
    a.strip_prefix('-')
        .is_some_and(|r| !r.starts_with('-') && !r.is_empty() && r.chars().all(|c| c == 'v'))
}

/// A panic is a bug: one line saying where instead of Rust's report (and its backtrace hint).
fn one_line_panics(verbose: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("a thread");
        eprintln!(
            "slowtrace: internal error in {thread}: {msg}{at} (a bug: please report it; -v shows a backtrace)"
        );
        if verbose {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the command line `args` gives before anything is attached: the exit code and the
    /// one line `main` prints (0 and "" when every check passes). `env` stands in for OTEL_*.
    fn outcome(args: &[&str], env: &[(&str, &str)]) -> (u8, String) {
        let args = std::iter::once("slowtrace")
            .chain(args.iter().copied())
            .map(std::ffi::OsString::from)
            .collect();
        let args = match config_file::expand(args) {
            Ok(a) => a,
            Err(e) => {
                let e = anyhow::Error::from(e);
                return (exit::code(&e), one_line(&e));
            }
        };
        let cli = match cli::Cli::try_parse_from(args) {
            Ok(c) => c,
            Err(e) => return (exit::clap_code(&e), exit::clap_line(&e)),
        };
        let env = |k: &str| {
            env.iter()
                .find(|(var, _)| *var == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let checked: anyhow::Result<()> = match cli.command {
            cli::Command::Record(a) => config::RecordConfig::from_args(&a)
                .map(drop)
                .map_err(Into::into),
            cli::Command::Top(a) => config::TopConfig::from_args(&a)
                .map(drop)
                .map_err(Into::into),
            cli::Command::Agent(a) => config::HeadlessConfig::from_args(&a, env)
                .map(drop)
                .map_err(Into::into),
            _ => Ok(()),
        };
        match checked {
            Ok(()) => (0, String::new()),
            Err(e) => (exit::code(&e), one_line(&e)),
        }
    }

    /// Arguments, environment, exit code, a piece of the message.
    type Row<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, u8, &'a str);

    /// docs/errors.md's table, the rows that need no root: each bad input gives one line naming
    /// the problem and its sysexits code. (The root rows are in tests/tests/errors.rs.)
    #[test]
    fn the_bad_input_table() {
        let dir = std::env::temp_dir().join(format!("slowtrace-bad-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let p = |name: &str| dir.join(name).display().to_string();
        std::fs::write(p("a-file"), "").unwrap();
        std::os::unix::fs::symlink(p("real"), p("link")).unwrap();
        std::fs::write(p("not-elf"), "#!/bin/sh\n").unwrap();
        std::fs::write(p("bad.toml"), "threshold = \n").unwrap();
        std::fs::write(p("unknown.toml"), "colour = 1\n").unwrap();
        std::fs::write(p("list.toml"), "command = \"gunicorn\"\n").unwrap();
        let me = std::process::id().to_string();
        let me = me.as_str();
        let pprof_dir = p("real");
        let handler_not_elf = format!("{}:main", p("not-elf"));
        let bad_toml = p("bad.toml");
        let unknown_toml = p("unknown.toml");
        let list_toml = p("list.toml");
        let out_file = p("a-file");
        let out_link = p("link");
        let otlp = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            (vec!["record", "--port", "0"], vec![], 64, "invalid value '0' for '--port <PORT>': 0 is not in 1..=65535"),
            (vec!["record", "--port", "70000"], vec![], 64, "70000 is not in 1..=65535"),
            (vec!["record", "--pid", "-5"], vec![], 64, "unexpected argument '-5'"),
            (vec!["record", "--pid", "999999999"], vec![], 66, "no process with pid 999999999"),
            (vec!["record", "--pid", "2"], vec![], 64, "pid 2 (kthreadd) is a kernel thread"),
            (vec!["record"], vec![], 64, "nothing to trace: give --pid PID, --port PORT or -- COMMAND"),
            (vec!["record", "--", "no-such-server-binary"], vec![], 66, "command not found: no-such-server-binary"),
            (vec!["record", "--pid", me, "--threshold=-1s"], vec![], 64, "invalid value '-1s' for '--threshold <DURATION>'"),
            (vec!["record", "--pid", me, "--threshold", "soon"], vec![], 64, "invalid value 'soon' for '--threshold <DURATION>'"),
            (vec!["record", "--pid", me, "--duration", "0s"], vec![], 64, "--duration must be more than zero"),
            (vec!["record", "--pid", me, "--duration", "99999999999999999999s"], vec![], 64, "number is too large"),
            (vec!["record", "--pid", me, "--endpoint", "GET /*"], vec![], 64, "the following required arguments were not provided: --flamegraph"),
            (vec!["record", "--pid", me, "--sample-hz", "5000"], vec![], 64, "--sample-hz 5000: use 1 to 1000"),
            (vec!["record", "--pid", me, "--handler", "no-colon"], vec![], 64, "--handler no-colon: expected BINARY:PATTERN"),
            (vec!["record", "--pid", me, "--handler", &handler_not_elf], vec![], 65, "is not an ELF file with symbols"),
            (vec!["record", "--pid", me, "--handler", "/bin/true:*handle_request*"], vec![], 65, "no function matches in /bin/true"),
            (vec!["record", "--pid", me, "--handler", "/no/such/server:main"], vec![], 66, "cannot read /no/such/server: No such file or directory"),
            (vec!["record", "--pid", me, "--interrupt-after", "soon"], vec![], 64, "--interrupt-after \"soon\": expected DURATION:SIGNAL"),
            (vec!["record", "--pid", me, "--dump-signal", "SIGFOO"], vec![], 64, "unknown signal \"SIGFOO\""),
            (vec!["record", "--pid", me, "-o", &out_file], vec![], 73, "exists and is not a directory"),
            (vec!["record", "--pid", me, "-o", &out_link], vec![], 73, "is a symbolic link; give the directory it points to"),
            (vec!["record", "--pid", me, "-o", "/proc/nonexistent/x"], vec![], 73, "output directory /proc/nonexistent/x: No such file or directory"),
            (vec!["top", "--pid", me, "--export", &out_link], vec![], 73, "is a symbolic link"),
            (vec!["record", "--pid", me, "--pprof", &pprof_dir], vec![], 73, "is a directory; give a file name"),
            (vec!["record", "--pid", me, "--sample-hz", "0", "--pprof", "x.pb.gz"], vec![], 64, "--pprof needs sampling on"),
            (vec!["record", "--pid", me, "--pyroscope", "pyroscope:4040"], vec![], 64, "give the server's http:// or https:// URL"),
            (vec!["record", "--bogus"], vec![], 64, "unexpected argument '--bogus' found"),
            (vec!["frobnicate"], vec![], 64, "unrecognized subcommand 'frobnicate'"),
            (vec!["agent", "--pid", me, "--metrics-addr", "localhost"], vec![], 64, "--metrics-addr \"localhost\": give HOST:PORT"),
            (vec!["agent", "--pid", me, "--sample-ratio", "2"], vec![], 64, "--sample-ratio 2: use a number from 0 to 1"),
            (vec!["agent", "--pid", me, "--max-endpoints", "0"], vec![], 64, "--max-endpoints must be at least 1"),
            (vec!["agent", "--pid", me, "--log-every", "0s"], vec![], 64, "--log-every must be more than zero"),
            (vec!["agent", "--pid", me, "--otlp-endpoint", "collector:4318"], vec![], 64, "OTLP endpoint"),
            (vec!["agent", "--pid", me, "--otlp-protocol", "http/json", "--otlp-endpoint", "http://127.0.0.1:4318"], vec![], 64, "use grpc or http/protobuf"),
            (vec!["agent", "--pid", me], vec![otlp, ("OTEL_EXPORTER_OTLP_PROTOCOL", "smoke")], 64, "OTLP protocol \"smoke\""),
            (vec!["agent", "--pid", me, "--otlp-protocol", "grpc"], vec![], 64, "--otlp-protocol needs an endpoint"),
            (vec!["agent", "--config", &bad_toml, "--pid", me], vec![], 78, "string values must be quoted"),
            (vec!["agent", "--config", &unknown_toml, "--pid", me], vec![], 78, "unknown key \"colour\""),
            (vec!["agent", "--config", &list_toml], vec![], 78, "key \"command\": a list of strings"),
            (vec!["agent", "--config", "/no/such/agent.toml"], vec![], 66, "--config /no/such/agent.toml: No such file or directory"),
            (vec!["agent", "--config"], vec![], 64, "--config needs a file name"),
            (vec!["doctor", "--port", "0"], vec![], 64, "0 is not in 1..=65535"),
        ];
        for (args, env, code, needle) in &table {
            let (got, line) = outcome(args, env);
            assert_eq!(
                (got, line.contains(needle)),
                (*code, true),
                "{args:?}: {line}"
            );
            assert!(!line.contains('\n'), "{args:?}: not one line: {line}");
            assert!(!line.contains("(os error"), "{args:?}: {line}");
        }
        assert!(table.len() >= 25);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let err = config::prepare_output_dir(std::path::Path::new("/proc/nonexistent/x"))
            .map_err(anyhow::Error::from)
            .unwrap_err();
        let line = one_line(&err);
        assert_eq!(
            line.matches("No such file or directory").count(),
            1,
            "{line}"
        );
        assert!(
            line.starts_with("output directory /proc/nonexistent/x: "),
            "{line}"
        );
        let outer = anyhow::anyhow!("inner cause").context("doing a thing");
        assert_eq!(one_line(&outer), "doing a thing: inner cause");
    }
}
