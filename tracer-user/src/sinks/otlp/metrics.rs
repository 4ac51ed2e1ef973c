//! The fleet metrics snapshot → an OTLP metrics export: cumulative sums and histograms since the
//! agent started, one resource per service (`service_name` becomes the resource's
//! `service.name`), label names in OpenTelemetry's dotted form.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
};

use super::{resource, scope, span::kv};
use crate::sinks::metrics::{Kind, Snapshot, Unit, Value, BUCKETS};

/// Prometheus label name → OpenTelemetry attribute name.
fn otel_key(k: &str) -> String {
    match k {
        "http_request_method" => "http.request.method".into(),
        "http_route" => "http.route".into(),
        "http_response_status_code" => "http.response.status_code".into(),
        "server_address" => "server.address".into(),
        other => format!("slowtrace.{other}"),
    }
}

pub fn request(
    snap: &Snapshot,
    start_ns: u64,
    now_ns: u64,
    host: &str,
    fixed_service: Option<&str>,
    extra: &[(String, String)],
) -> ExportMetricsServiceRequest {
    // service → metric name → metric (data points appended per service).
    let mut by_service: BTreeMap<String, BTreeMap<&'static str, Metric>> = BTreeMap::new();
    let agent_service = fixed_service.unwrap_or("slowtrace").to_owned();
    for fam in &snap.families {
        for p in &fam.points {
            let service = p
                .labels
                .iter()
                .find(|(k, _)| *k == "service_name")
                .map_or_else(|| agent_service.clone(), |(_, v)| v.clone());
            let attrs: Vec<KeyValue> = p
                .labels
                .iter()
                .filter(|(k, _)| *k != "service_name")
                .map(|(k, v)| match (*k, v.parse::<i64>()) {
                    ("http_response_status_code", Ok(code)) => kv(&otel_key(k), code),
                    _ => kv(&otel_key(k), v.as_str()),
                })
                .collect();
            let metric = by_service
                .entry(service)
                .or_default()
                .entry(fam.otel_name)
                .or_insert_with(|| Metric {
                    name: fam.otel_name.into(),
                    description: fam.help.into(),
                    unit: match fam.unit {
                        Some(Unit::Seconds) => "s".into(),
                        Some(Unit::Bytes) => "By".into(),
                        None => "1".into(),
                    },
                    data: Some(match fam.kind {
                        Kind::Counter => Data::Sum(Sum {
                            data_points: Vec::new(),
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        }),
                        Kind::Gauge => Data::Gauge(Gauge {
                            data_points: Vec::new(),
                        }),
                        Kind::Histogram => Data::Histogram(Histogram {
                            data_points: Vec::new(),
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        }),
                    }),
                    ..Metric::default()
                });
            let number = |v: number_data_point::Value| NumberDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                value: Some(v),
                ..NumberDataPoint::default()
            };
            match (&mut metric.data, &p.value) {
                (Some(Data::Sum(s)), Value::Int(v)) => s.data_points.push(number(
                    number_data_point::Value::AsInt(i64::try_from(*v).unwrap_or(i64::MAX)),
                )),
                (Some(Data::Sum(s)), Value::Float(v)) => {
                    s.data_points
                        .push(number(number_data_point::Value::AsDouble(*v)));
                }
                (Some(Data::Gauge(g)), Value::Int(v)) => g.data_points.push(number(
                    number_data_point::Value::AsInt(i64::try_from(*v).unwrap_or(i64::MAX)),
                )),
                (Some(Data::Gauge(g)), Value::Float(v)) => {
                    g.data_points
                        .push(number(number_data_point::Value::AsDouble(*v)));
                }
                (Some(Data::Histogram(h)), Value::Hist(x)) => {
                    h.data_points.push(HistogramDataPoint {
                        attributes: attrs.clone(),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        count: x.count,
                        sum: Some(x.sum),
                        bucket_counts: x.buckets.to_vec(),
                        explicit_bounds: BUCKETS.to_vec(),
                        ..HistogramDataPoint::default()
                    });
                }
                _ => {}
            }
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: by_service
            .into_iter()
            .map(|(service, metrics)| ResourceMetrics {
                resource: Some(resource(&service, None, host, extra)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: metrics.into_values().collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::metrics::FleetMetrics;

    #[test]
    fn histograms_and_counters_become_cumulative_otlp_metrics_per_service() {
        let m = FleetMetrics::new(100, None);
        let mut r = crate::model::request::test_request();
        r.duration_us = 30_000;
        m.request(&r);
        m.request(&r);
        let req = request(&m.snapshot(), 1, 2, "host", None, &[]);
        let gunicorn = req
            .resource_metrics
            .iter()
            .find(|rm| {
                rm.resource.as_ref().unwrap().attributes.iter().any(|a| {
                    a.key == "service.name" && format!("{:?}", a.value).contains("gunicorn")
                })
            })
            .expect("a resource for the gunicorn service");
        let metrics = &gunicorn.scope_metrics[0].metrics;
        let dur = metrics
            .iter()
            .find(|m| m.name == "http.server.request.duration")
            .unwrap();
        assert_eq!(dur.unit, "s");
        let Some(Data::Histogram(h)) = &dur.data else {
            panic!("not a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 2);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 2);
        assert!(p.attributes.iter().any(|a| a.key == "http.route"));
        assert!(p
            .attributes
            .iter()
            .any(|a| a.key == "http.response.status_code"
                && format!("{:?}", a.value).contains("IntValue(200)")));
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        // The agent's own metrics go under the agent's resource.
        assert!(req.resource_metrics.iter().any(|rm| rm.scope_metrics[0]
            .metrics
            .iter()
            .any(|m| m.name == "process.memory.usage")));
    }
}
