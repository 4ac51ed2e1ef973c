//! Where and how to send OTLP: the flags, then the standard `OTEL_*` environment variables
//! (flags win), then the specification's defaults. Pure: the environment comes in as a function,
//! so every rule is unit-tested.
//!
//! Honoured: `OTEL_EXPORTER_OTLP_{,TRACES_,METRICS_}ENDPOINT`, `…_PROTOCOL`, `…_HEADERS`,
//! `…_TIMEOUT`, `…_COMPRESSION` (gzip, OTLP/HTTP only), `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, SettingsError> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            other => Err(SettingsError::Protocol(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("OTLP protocol {0:?}: use grpc or http/protobuf (http/json is not supported)")]
    Protocol(String),
    #[error("OTLP endpoint {0:?}: give a URL such as http://127.0.0.1:4318 (http/protobuf) or http://127.0.0.1:4317 (grpc)")]
    Endpoint(String),
    #[error("--otlp-protocol needs an endpoint: give --otlp-endpoint URL or set OTEL_EXPORTER_OTLP_ENDPOINT")]
    ProtocolWithoutEndpoint,
    #[error("{var}={value:?}: {why}")]
    Env {
        var: &'static str,
        value: String,
        why: &'static str,
    },
}

/// One signal's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The full URL: `…/v1/traces` for OTLP/HTTP, the server's base URL for gRPC.
    pub url: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    pub traces: Target,
    /// None: metrics not exported over OTLP (`--otlp-metrics false`).
    pub metrics: Option<Target>,
    pub metrics_every: Duration,
    /// `service.name` for every span; None: each process's executable name.
    pub service_name: Option<String>,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
}

/// What the flags said (each None when not given).
#[derive(Debug, Clone, Default)]
pub struct Flags<'a> {
    pub endpoint: Option<&'a str>,
    pub protocol: Option<&'a str>,
    pub service_name: Option<&'a str>,
    pub metrics: bool,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings, or None when no endpoint is configured anywhere (OTLP off).
pub fn resolve(
    flags: &Flags<'_>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpSettings>, SettingsError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let base = flags
        .endpoint
        .map(str::to_owned)
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let traces_specific = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if base.is_none() && traces_specific.is_none() {
        // A protocol flag with nowhere to send is a mistake worth saying; OTLP stays off.
        if let Some(p) = flags.protocol {
            Protocol::parse(p)?;
            return Err(SettingsError::ProtocolWithoutEndpoint);
        }
        return Ok(None);
    }
    let traces = target(flags, &env, "TRACES", "v1/traces", base.as_deref())?;
    let metrics = if flags.metrics {
        Some(target(
            flags,
            &env,
            "METRICS",
            "v1/metrics",
            base.as_deref(),
        )?)
    } else {
        None
    };
    let metrics_every = match env("OTEL_METRIC_EXPORT_INTERVAL") {
        Some(v) => Duration::from_millis(v.trim().parse().map_err(|_| SettingsError::Env {
            var: "OTEL_METRIC_EXPORT_INTERVAL",
            value: v.clone(),
            why: "milliseconds expected",
        })?),
        None => Duration::from_secs(60),
    }
    .max(Duration::from_secs(1));
    let resource = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| pairs(&v))
        .unwrap_or_default();
    let service_name = flags
        .service_name
        .map(str::to_owned)
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .or_else(|| {
            resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        });
    Ok(Some(OtlpSettings {
        traces,
        metrics,
        metrics_every,
        service_name,
        resource: resource
            .into_iter()
            .filter(|(k, _)| k != "service.name")
            .collect(),
    }))
}

fn target(
    flags: &Flags<'_>,
    env: &impl Fn(&str) -> Option<String>,
    signal: &str,
    path: &str,
    base: Option<&str>,
) -> Result<Target, SettingsError> {
    let var = |what: &str| {
        env(&format!("OTEL_EXPORTER_OTLP_{signal}_{what}"))
            .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{what}")))
    };
    let protocol = match flags.protocol {
        Some(p) => Protocol::parse(p)?,
        None => var("PROTOCOL")
            .map(|p| Protocol::parse(&p))
            .transpose()?
            .unwrap_or(Protocol::HttpProtobuf),
    };
    // A signal-specific endpoint is used as is; the base one gets the signal's path appended
    // (OTLP/HTTP only: gRPC has one endpoint for all signals).
    let specific = env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"));
    let url = match (flags.endpoint, specific, base) {
        (Some(b), _, _) | (None, None, Some(b)) => match protocol {
            Protocol::HttpProtobuf => format!("{}/{path}", b.trim_end_matches('/')),
            Protocol::Grpc => b.to_owned(),
        },
        (None, Some(s), _) => s,
        (None, None, None) => return Err(SettingsError::Endpoint(String::new())),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(SettingsError::Endpoint(url));
    }
    let headers = var("HEADERS").map(|h| pairs(&h)).unwrap_or_default();
    let timeout = match var("TIMEOUT") {
        Some(v) => Duration::from_millis(v.trim().parse().map_err(|_| SettingsError::Env {
            var: "OTEL_EXPORTER_OTLP_TIMEOUT",
            value: v.clone(),
            why: "milliseconds expected",
        })?),
        None => DEFAULT_TIMEOUT,
    };
    let gzip = match var("COMPRESSION").as_deref().map(str::trim) {
        None | Some("none") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(SettingsError::Env {
                var: "OTEL_EXPORTER_OTLP_COMPRESSION",
                value: other.to_owned(),
                why: "use gzip or none",
            })
        }
    };
    Ok(Target {
        url,
        protocol,
        headers,
        timeout,
        gzip: gzip && protocol == Protocol::HttpProtobuf,
    })
}

/// `k1=v1,k2=v2` with percent-decoding of values (W3C baggage form, as the spec says).
fn pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn nothing_configured_means_off() {
        assert_eq!(resolve(&Flags::default(), env(&[])).unwrap(), None);
        let proto = |p| Flags {
            protocol: Some(p),
            ..Flags::default()
        };
        assert_eq!(
            resolve(&proto("grpc"), env(&[])).unwrap_err(),
            SettingsError::ProtocolWithoutEndpoint
        );
        assert_eq!(
            resolve(&proto("smoke"), env(&[])).unwrap_err(),
            SettingsError::Protocol("smoke".into())
        );
    }

    #[test]
    fn the_base_endpoint_gets_the_signal_path_for_http_but_not_for_grpc() {
        let f = Flags {
            metrics: true,
            ..Flags::default()
        };
        let s = resolve(
            &f,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces.url, "http://c:4318/v1/traces");
        assert_eq!(s.metrics.unwrap().url, "http://c:4318/v1/metrics");
        let s = resolve(
            &f,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces.url, "http://c:4317");
        assert_eq!(s.traces.protocol, Protocol::Grpc);
    }

    #[test]
    fn flags_win_over_the_environment_and_signal_variables_over_general_ones() {
        let f = Flags {
            endpoint: Some("http://flag:4318"),
            service_name: Some("shop"),
            ..Flags::default()
        };
        let s = resolve(
            &f,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_SERVICE_NAME", "envname"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "c=3"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,service.name=r",
                ),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces.url, "http://flag:4318/v1/traces");
        assert_eq!(s.service_name.as_deref(), Some("shop"));
        assert_eq!(s.traces.headers, vec![("c".into(), "3".into())]);
        assert_eq!(s.traces.timeout, Duration::from_millis(2500));
        assert!(s.traces.gzip);
        assert_eq!(
            s.resource,
            vec![("deployment.environment".into(), "prod".into())]
        );
        assert!(s.metrics.is_none());
        let s = resolve(
            &Flags::default(),
            env(&[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=r"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces.url, "http://t:1/custom");
        assert_eq!(s.service_name.as_deref(), Some("r"));
        assert_eq!(
            s.traces.headers,
            vec![("a".into(), "1".into()), ("b".into(), "x y".into())]
        );
    }

    #[test]
    fn bad_values_are_one_clear_error() {
        let e = resolve(
            &Flags {
                endpoint: Some("c:4318"),
                ..Flags::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("give a URL"), "{e}");
        let e = resolve(
            &Flags {
                endpoint: Some("http://c"),
                protocol: Some("http/json"),
                ..Flags::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("http/json is not supported"), "{e}");
        let e = resolve(
            &Flags {
                endpoint: Some("http://c"),
                ..Flags::default()
            },
            env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\": milliseconds expected"
        );
    }
}
