//! Command-line surface. Parsing only; `config` turns this into something validated.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Find the slow requests of a running web server, from outside, with eBPF.
///
/// slowtrace rebuilds every HTTP request a server process handles from its socket syscalls
/// (accept, read/recv*, write/send*, close) and times it: no code change, no restart, any
/// language. It needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and, to mount tracefs,
/// CAP_SYS_ADMIN).
#[derive(Debug, Parser)]
#[command(
    name = "slowtrace",
    version,
    propagate_version = true,
    after_help = "Run `slowtrace doctor` first to see what this host allows.\n\n\
Exit codes (sysexits): 0 ok, 1 other failure, 64 bad flag or value, 65 unusable input (non-ELF --handler), \
66 no such pid/command/file, 69 kernel feature missing, 70 internal error, 71 OS error, \
73 cannot create output, 74 output write failed, 77 missing privileges, 78 bad --config \
or OTEL_* variable. `record -- CMD` exits with CMD's own status when it fails. \
docs/errors.md lists every message."
)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace requests to files and print a per-endpoint summary on exit.
    ///
    /// Examples:
    ///   slowtrace record --port 8000 --duration 30s -o ./trace
    ///   slowtrace record --pid 1234 --pid 1240
    ///   slowtrace record -o ./trace -- gunicorn -w 4 app:app
    ///
    /// Stops when --duration is over, on Ctrl-C, or when the launched command exits.
    #[command(verbatim_doc_comment)]
    Record(RecordArgs),

    /// Live dashboard: endpoints, slow requests as they happen, in-flight requests ticking.
    ///
    /// Examples:
    ///   slowtrace top --port 8000
    ///   slowtrace top --pid 1234 --threshold 300ms --export ./trace
    ///   slowtrace top -- gunicorn -w 4 app:app
    ///
    /// Press ? for the keys, q to quit. Slow requests are captured as in `record`; Enter on one
    /// shows its stacks, f ranks hot frames. Requests (and slow.jsonl, slow/*.txt) are streamed to
    /// a private temporary directory, or to --export DIR (press e to export without --export).
    #[command(verbatim_doc_comment)]
    Top(TopArgs),

    /// Print the Python stack of each thread of a running CPython 3.9-3.13 process.
    ///
    /// Examples:
    ///   slowtrace pystack --pid 1234
    ///   slowtrace pystack --pid 1234 --tid 1240
    ///
    /// Reads the process's memory from outside (needs root or CAP_SYS_PTRACE); the process is
    /// never paused. Frames are printed outermost first, as in a Python traceback.
    #[command(name = "pystack", verbatim_doc_comment)]
    PyStack(crate::python::PyStackArgs),

    /// Run headless on a host: metrics for Prometheus, spans and metrics over OTLP.
    ///
    /// Examples:
    ///   slowtrace agent --port 8000
    ///   slowtrace agent --port 8000 --otlp-endpoint http://127.0.0.1:4318 --sample-ratio 0.05
    ///   OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
    ///     slowtrace agent --pid 1234
    ///   slowtrace agent --config /etc/slowtrace/agent.toml
    ///
    /// Prometheus metrics are served at http://127.0.0.1:9464/metrics (--metrics-addr). Each
    /// request becomes a span when an OTLP endpoint is set (flag or OTEL_EXPORTER_OTLP_*): slow,
    /// killed and 5xx requests always, others at --sample-ratio. No per-request files unless
    /// --output DIR. A status line (seen, sent, dropped) is printed every --log-every and on
    /// SIGUSR1; SIGTERM and SIGINT stop it cleanly. docs/export.md has the details.
    #[command(verbatim_doc_comment, args_override_self = true)]
    Agent(AgentArgs),

    /// Check this host before tracing: kernel, BTF, tracefs, capabilities, each attach type.
    ///
    /// Examples:
    ///   slowtrace doctor
    ///   slowtrace doctor --pid 1234
    ///   slowtrace doctor --port 8000
    ///
    /// With --pid or --port it also reads the target's Python version and one stack of it.
    /// Exit code: 0 record would work fully; 1 it would work, degraded (the ✗ lines say what is
    /// lost); 77 it would not start for lack of privileges; 69 it would not start on this
    /// kernel; 66 no such --pid.
    #[command(verbatim_doc_comment)]
    Doctor(DoctorArgs),
}

/// What `slowtrace doctor` looks at besides the host.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check this process: is it alive, which Python, can its frames be read. Repeatable.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Also check whoever listens on this TCP port now. Repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
}

/// Where `record -o` writes by default, and where `top` exports on `e` without `--export`.
pub const DEFAULT_OUTPUT_DIR: &str = "slowtrace-out";

/// Which processes to trace. At least one is required.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// Trace this process, all its threads and every process it forks after attach
    /// (e.g. gunicorn workers respawned later). Repeatable.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace whoever listens on this TCP port now, and whoever binds it later. Repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Trace every process in this cgroup v2 (and the cgroups below it), including processes
    /// that arrive after attach. A directory under the cgroup2 mount, or a path as
    /// /proc/PID/cgroup shows it (/system.slice/docker-ID.scope). Repeatable.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,

    /// Trace a container: its cgroup is the one whose name contains ID (docker-ID.scope,
    /// libpod-ID.scope, cri-containerd-ID.scope; a unique prefix of the id is enough). Repeatable.
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Launch this command and trace it (and its children) from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The flags `record` and `top` share: what to trace and how. `config::AgentConfig::from_args`
/// turns them into the agent's settings, once, for both commands.
#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub targets: TargetArgs,

    /// Keep query strings in recorded paths. By default they are replaced by `?[redacted]`,
    /// since they often carry tokens and personal data.
    #[arg(long)]
    pub keep_query: bool,

    /// A request running longer than this is slow: its thread's Python, native and kernel frames
    /// are captured while it runs, and it is written with them to slow.jsonl and slow/*.txt next
    /// to requests.jsonl (top also lists it and shows its captures). `0` turns captures off.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s", value_name = "DURATION")]
    pub threshold: Duration,

    /// Capture a slow request again this often until it ends. Default: half the threshold
    /// (at least 250 ms, the scan period).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub resample: Option<Duration>,

    /// The same statement or command (by fingerprint, to the same database or cache) this many
    /// times in one request is reported as an N+1 finding (findings.jsonl, the summary, top).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub n_plus_one: u32,

    /// At most this many captures per slow request.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub max_captures: u32,

    /// Time calls of native functions with uprobes: BINARY:PATTERN, PATTERN a glob over
    /// demangled names (Rust, C++, C), e.g. ./server:*handle_request*. Repeatable.
    #[arg(long = "handler", value_name = "BINARY:PATTERN")]
    pub handlers: Vec<String>,

    /// Opt-in: send SIGNAL once to the thread serving a request that runs longer than DURATION,
    /// e.g. 25s:SIGALRM, so an app that raises on it fails the request before the server's hard
    /// kill. Refused for a signal the process does not catch (it would die), unless --force.
    #[arg(long, value_name = "DURATION:SIGNAL")]
    pub interrupt_after: Option<String>,

    /// Opt-in: at the threshold, send SIGNAL once to the serving thread, for apps that dump their
    /// own traceback on it (e.g. faulthandler.register(signal.SIGUSR1)). Same check as above.
    #[arg(long, value_name = "SIGNAL")]
    pub dump_signal: Option<String>,

    /// Send --interrupt-after / --dump-signal signals even to processes that do not catch them.
    #[arg(long)]
    pub force: bool,

    /// Sample every traced thread this often while it runs (perf event, all CPUs): the CPU
    /// profile behind the flamegraphs and top's hot frames. Each sample carries its request's
    /// endpoint and, for CPython 3.9-3.13, the Python frames at that instant. 0 turns it off.
    #[arg(long, default_value_t = 99, value_name = "HZ")]
    pub sample_hz: u64,

    /// A keep-alive connection quiet this long after a response ends that request.
    /// The next request or a close ends it sooner.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms",
          value_name = "DURATION", hide_short_help = true)]
    pub idle_flush: Duration,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Stop after this long (e.g. 30s, 5m, 1h30m). Default: until Ctrl-C or the command exits.
    #[arg(short, long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Directory for requests.jsonl (created if missing; files are mode 0600).
    #[arg(
        short,
        long = "output",
        value_name = "DIR",
        default_value = DEFAULT_OUTPUT_DIR
    )]
    pub output: PathBuf,

    #[command(flatten)]
    pub trace: TraceArgs,

    /// Write flamegraphs: DIR/cpu.folded and cpu.svg (on-CPU samples), DIR/wall.folded and
    /// wall.svg (wall-clock time inside requests: on-CPU plus time blocked, charged to the stack
    /// where the thread blocked), DIR/profile.speedscope.json, and DIR/slow/<id>.svg for each slow
    /// request. The root frame is the endpoint. Adds an off-CPU probe on sched_switch.
    #[arg(long)]
    pub flamegraph: bool,

    /// With --flamegraph: keep only endpoints matching this glob, e.g. 'GET /api/*'.
    #[arg(long, value_name = "PATTERN", requires = "flamegraph")]
    pub endpoint: Option<String>,

    #[command(flatten)]
    pub pprof: PprofArgs,
}

/// Profiles for other tools: a pprof file and pushes to a Pyroscope-compatible server. Either
/// needs sampling on (the default, 99 Hz; not `--sample-hz 0`).
#[derive(Debug, Args, Clone)]
pub struct PprofArgs {
    /// Write the whole run's profile to FILE at exit: gzipped pprof (profile.proto), as `go tool
    /// pprof` and Pyroscope read it, mode 0600. Samples are labelled with endpoint, pid, tid,
    /// thread and, inside a request, its span_id (the span id of the request's OTLP span).
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,

    /// Push the profile of each period to this Pyroscope-compatible server (POST URL/ingest,
    /// pprof format), e.g. http://pyroscope:4040. Failed pushes are retried the next period.
    #[arg(long, value_name = "URL")]
    pub pyroscope: Option<String>,

    /// With --pyroscope: how often to push.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s",
          value_name = "DURATION")]
    pub pyroscope_every: Duration,
}

impl Default for PprofArgs {
    fn default() -> Self {
        Self {
            pprof: None,
            pyroscope: None,
            pyroscope_every: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub trace: TraceArgs,

    /// Write requests.jsonl, slow.jsonl and slow/*.txt to DIR, as `record -o DIR` does: kept up to
    /// date while the dashboard runs, complete on exit. Without it they go to a private temporary
    /// directory, deleted on exit unless `e` was pressed (which exports to ./slowtrace-out).
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Read options from this TOML file. Keys are the long flag names, values their arguments:
    /// `port = [8000]`, `threshold = "500ms"`, `otlp-endpoint = "http://…"`, `keep-query = true`.
    /// Flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub export: ExportArgs,

    #[command(flatten)]
    pub pprof: PprofArgs,

    /// Also write requests.jsonl, findings.jsonl and slow/ reports to DIR, as `record` does. Off
    /// by default: an agent's disk use stays bounded.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Print a status line (requests seen, spans sent and dropped, losses) this often. SIGUSR1
    /// prints one at once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", value_name = "DURATION")]
    pub log_every: Duration,

    /// Stop after this long. Default: until SIGTERM or SIGINT.
    #[arg(short, long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
}

/// Where the agent sends what it sees.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics; `off` serves none. Loopback unless an
    /// address says otherwise (e.g. 0.0.0.0:9464).
    #[arg(long, value_name = "ADDR", default_value = crate::sinks::prometheus::DEFAULT_ADDR)]
    pub metrics_addr: String,

    /// Distinct endpoints kept as their own metric series at most; requests of the others are
    /// counted under http_route="(overflow)".
    #[arg(long, default_value_t = crate::sinks::metrics::DEFAULT_MAX_ENDPOINTS, value_name = "N")]
    pub max_endpoints: usize,

    /// Send spans and metrics over OTLP to this URL (the collector's base URL, e.g.
    /// http://127.0.0.1:4318 for http/protobuf or http://127.0.0.1:4317 for grpc). Default:
    /// OTEL_EXPORTER_OTLP_ENDPOINT; unset, no OTLP.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf`. Default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Send spans only, no metrics, over OTLP.
    #[arg(long)]
    pub no_otlp_metrics: bool,

    /// The service.name of spans and metrics. Default: OTEL_SERVICE_NAME, else each process's
    /// name (gunicorn, nginx…).
    #[arg(long, value_name = "NAME")]
    pub service_name: Option<String>,

    /// Share of ordinary requests sent as spans, 0 to 1. Slow, killed and 5xx requests are
    /// always sent.
    #[arg(long, default_value_t = 0.1, value_name = "RATIO")]
    pub sample_ratio: f64,

    /// Requests waiting to be sent at most; over it they are dropped and counted (a collector
    /// that is down or slow never slows tracing).
    #[arg(long, default_value_t = crate::sinks::otlp::DEFAULT_QUEUE, value_name = "N", hide_short_help = true)]
    pub otlp_queue: usize,
}
