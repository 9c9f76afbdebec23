//! OTLP metrics for `serve --otlp-endpoint`: the families `/metrics` shows, converted at
//! each push into OpenTelemetry's own messages (`opentelemetry-proto`) and sent over gRPC
//! (its generated client, on the tonic the CRI client uses) or OTLP/HTTP (protobuf).
//!
//! Not through the SDK's meter pipeline: it aggregates measurements itself and has no way
//! in for values aggregated elsewhere (0.33 has no MetricProducer, no asynchronous
//! histogram, and its data types cannot be built outside it). tuneprobe's values are
//! cumulative kernel counters and pre-bucketed histograms: replayed as measurements they
//! would get invented sums and min/max, and the SDK's 2000-series cap per instrument
//! would fold workloads the exporter keeps. Converting the families the exporter built
//! keeps one source of truth: every value pushed is the one a scrape would show.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use prost::Message as _;

/// tuneprobe's workload labels and the attribute names OpenTelemetry's semantic
/// conventions give them; every other label keeps its name.
pub(crate) const SEMANTIC_NAMES: &[(&str, &str)] = &[
    ("namespace", "k8s.namespace.name"),
    ("pod", "k8s.pod.name"),
    ("container", "k8s.container.name"),
];

/// The attribute name of a `/metrics` label.
fn attribute_name(label: &str) -> &str {
    SEMANTIC_NAMES
        .iter()
        .find(|(name, _)| *name == label)
        .map_or(label, |(_, semantic)| semantic)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

/// A series' labels as attributes. Empty values are left out: to Prometheus an empty
/// label is no label, and the conventions want an attribute that is not known absent.
fn attributes(labels: &[LabelPair]) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|l| !l.value().is_empty())
        .map(|l| string(attribute_name(l.name()), l.value()))
        .collect()
}

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The resource every push describes: this host and node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub host_name: String,
    pub node_name: String,
}

/// One push: `families` as they are now, counters and histograms cumulative since
/// `start` (when the agent started counting).
pub(crate) fn request(
    families: &[MetricFamily],
    node: &Node,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let times = (nanos(start), nanos(now));
    let metrics = families
        .iter()
        .filter_map(|family| metric(family, times))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", "tuneprobe"),
                    string("host.name", &node.host_name),
                    string("k8s.node.name", &node.node_name),
                ],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tuneprobe".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// A family as an OTLP metric: counters as cumulative monotonic sums, gauges as gauges,
/// histograms as explicit-bucket histograms with the same bounds. Names stay those of
/// `/metrics` (units in them, no OTLP unit).
fn metric(family: &MetricFamily, (start, now): (u64, u64)) -> Option<Metric> {
    let series = family.get_metric();
    let number = |value: f64, labels: &[LabelPair]| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match family.get_field_type() {
        MetricType::COUNTER => Data::Sum(Sum {
            data_points: series
                .iter()
                .map(|m| number(m.get_counter().get_value(), m.get_label()))
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricType::GAUGE | MetricType::UNTYPED => Data::Gauge(Gauge {
            data_points: series
                .iter()
                .map(|m| number(m.get_gauge().get_value(), m.get_label()))
                .collect(),
        }),
        MetricType::HISTOGRAM => Data::Histogram(Histogram {
            data_points: series
                .iter()
                .map(|m| HistogramDataPoint {
                    attributes: attributes(m.get_label()),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    ..histogram_point(m.get_histogram())
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
        // Not built by the exporter.
        MetricType::SUMMARY => return None,
    };
    Some(Metric {
        name: family.name().to_string(),
        description: family.help().to_string(),
        data: Some(data),
        ..Metric::default()
    })
}

/// Prometheus's cumulative `le` buckets as OTLP's per-bucket counts (one more than the
/// bounds: the last is above the highest bound, Prometheus's `+Inf` less the others).
fn histogram_point(h: &prometheus::proto::Histogram) -> HistogramDataPoint {
    let mut bounds = Vec::new();
    let mut counts = Vec::new();
    let mut below = 0;
    for bucket in h.get_bucket() {
        if bucket.upper_bound().is_infinite() {
            continue;
        }
        bounds.push(bucket.upper_bound());
        counts.push(bucket.cumulative_count().saturating_sub(below));
        below = bucket.cumulative_count();
    }
    counts.push(h.get_sample_count().saturating_sub(below));
    HistogramDataPoint {
        count: h.get_sample_count(),
        sum: Some(h.get_sample_sum()),
        bucket_counts: counts,
        explicit_bounds: bounds,
        ..HistogramDataPoint::default()
    }
}

/// How pushes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// OTLP/gRPC (`http://HOST:4317`, plain text).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http(s)://HOST:4318`; `/v1/metrics` is appended
    /// unless the URL ends with it).
    Http,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error("OTLP/gRPC export to {endpoint}: {status}")]
    Grpc {
        endpoint: String,
        status: Box<tonic::Status>,
    },
    #[error("OTLP/HTTP export to {url}: {source}")]
    Http {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("invalid OTLP endpoint {0}: {1}")]
    Endpoint(String, String),
}

/// Sends requests to one receiver with the configured headers.
#[derive(Debug, Clone)]
pub(crate) struct Pusher {
    endpoint: String,
    headers: Vec<(String, String)>,
    transport: Transport,
}

#[derive(Debug, Clone)]
enum Transport {
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
    Http(ureq::Agent),
}

/// How long one push may take before it counts as failed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl Pusher {
    /// A pusher to `endpoint`; connects lazily (a receiver that starts later is fine).
    /// gRPC needs to be called within a tokio runtime.
    pub(crate) fn new(
        endpoint: &str,
        protocol: Protocol,
        headers: Vec<(String, String)>,
    ) -> Result<Self, PushError> {
        let url = target(endpoint, protocol)?;
        let transport = match protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| PushError::Endpoint(url.clone(), e.to_string()))?
                    .timeout(PUSH_TIMEOUT)
                    .connect_lazy();
                Transport::Grpc(MetricsServiceClient::new(channel))
            }
            Protocol::Http => Transport::Http(
                ureq::Agent::config_builder()
                    .timeout_global(Some(PUSH_TIMEOUT))
                    .build()
                    .into(),
            ),
        };
        Ok(Self {
            endpoint: url,
            headers,
            transport,
        })
    }

    /// Where the requests go (with `/v1/metrics` for OTLP/HTTP).
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one request; the receiver's refusal is an error.
    pub(crate) async fn push(&self, request: ExportMetricsServiceRequest) -> Result<(), PushError> {
        match &self.transport {
            Transport::Grpc(client) => {
                let mut call = tonic::Request::new(request);
                for (name, value) in &self.headers {
                    if let (Ok(name), Ok(value)) = (
                        tonic::metadata::MetadataKey::from_bytes(name.to_lowercase().as_bytes()),
                        value.parse(),
                    ) {
                        call.metadata_mut().insert(name, value);
                    }
                }
                client
                    .clone()
                    .export(call)
                    .await
                    .map(drop)
                    .map_err(|status| PushError::Grpc {
                        endpoint: self.endpoint.clone(),
                        status: Box::new(status),
                    })
            }
            Transport::Http(agent) => {
                let (agent, url, headers) =
                    (agent.clone(), self.endpoint.clone(), self.headers.clone());
                let body = request.encode_to_vec();
                let sent = tokio::task::spawn_blocking(move || {
                    let mut post = agent.post(&url).content_type("application/x-protobuf");
                    for (name, value) in &headers {
                        post = post.header(name, value);
                    }
                    post.send(&body[..]).map(drop).map_err(|e| PushError::Http {
                        url,
                        source: Box::new(e),
                    })
                })
                .await;
                sent.unwrap_or_else(|e| {
                    Err(PushError::Endpoint(self.endpoint.clone(), e.to_string()))
                })
            }
        }
    }
}

/// Where requests to `endpoint` go (OTLP/HTTP: with `/v1/metrics`), or why they cannot:
/// checked before the programs load, so that a wrong URL fails at once.
pub(crate) fn target(endpoint: &str, protocol: Protocol) -> Result<String, PushError> {
    let invalid = |why: &str| Err(PushError::Endpoint(endpoint.to_string(), why.to_string()));
    match protocol {
        Protocol::Grpc if !endpoint.starts_with("http://") => invalid(
            "gRPC is sent in plain text to an http:// URL (use --otlp-protocol http for https)",
        ),
        Protocol::Grpc => Ok(endpoint.to_string()),
        Protocol::Http if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") => {
            invalid("expected an http:// or https:// URL")
        }
        Protocol::Http => {
            let base = endpoint.trim_end_matches('/');
            Ok(if base.ends_with("/v1/metrics") {
                base.to_string()
            } else {
                format!("{base}/v1/metrics")
            })
        }
    }
}

/// `NAME=VALUE` of `--otlp-header`.
pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value))
            if !name.trim().is_empty()
                && tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                    name.trim().to_lowercase().as_bytes(),
                )
                .is_ok() =>
        {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err("expected NAME=VALUE with a valid header name".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::families::{Families, IO_BUCKETS, Value};

    fn families() -> Vec<MetricFamily> {
        let mut f = Families::default();
        let workload = vec![
            ("namespace", "shop".to_string()),
            ("pod", "api".to_string()),
            ("container", "app".to_string()),
            ("cgroup", String::new()),
        ];
        let mut labels = workload.clone();
        labels.push(("reason", "NO_SOCKET".to_string()));
        f.counter("tuneprobe_packet_drops_total", "drops", labels, 3.0);
        f.gauge("tuneprobe_folded_workloads", "folded", vec![], 2.0);
        let buckets: Vec<(f64, u64)> = IO_BUCKETS
            .iter()
            .map(|&b| (b, if b >= 0.001 { 2 } else { 0 }))
            .collect();
        f.add(
            "tuneprobe_block_service_seconds",
            "service",
            workload,
            Value::Histogram {
                count: 3,
                sum: 12.5,
                buckets,
            },
        );
        f.encode()
    }

    fn node() -> Node {
        Node {
            host_name: "host-a".into(),
            node_name: "node-a".into(),
        }
    }

    fn find<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Data {
        request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.data.as_ref())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn keys(attributes: &[KeyValue]) -> Vec<(&str, String)> {
        attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.as_str(), value)
            })
            .collect()
    }

    #[test]
    fn counters_are_cumulative_sums_with_semantic_attribute_names() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let now = start + Duration::from_secs(30);
        let request = request(&families(), &node(), start, now);
        let resource = &request.resource_metrics[0].resource.as_ref().unwrap();
        assert_eq!(
            keys(&resource.attributes),
            [
                ("service.name", "tuneprobe".to_string()),
                ("host.name", "host-a".to_string()),
                ("k8s.node.name", "node-a".to_string())
            ]
        );
        let Data::Sum(sum) = find(&request, "tuneprobe_packet_drops_total") else {
            panic!("not a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let [point] = &sum.data_points[..] else {
            panic!("{sum:?}")
        };
        assert_eq!(point.value, Some(number_data_point::Value::AsDouble(3.0)));
        assert_eq!(
            (point.start_time_unix_nano, point.time_unix_nano),
            (100_000_000_000, 130_000_000_000)
        );
        // The empty cgroup label is left out.
        assert_eq!(
            keys(&point.attributes),
            [
                ("k8s.namespace.name", "shop".to_string()),
                ("k8s.pod.name", "api".to_string()),
                ("k8s.container.name", "app".to_string()),
                ("reason", "NO_SOCKET".to_string())
            ]
        );
        let Data::Gauge(gauge) = find(&request, "tuneprobe_folded_workloads") else {
            panic!("not a gauge")
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(2.0))
        );
        assert!(gauge.data_points[0].attributes.is_empty());
    }

    #[test]
    fn histograms_keep_their_bounds_with_per_bucket_counts() {
        let now = SystemTime::now();
        let request = request(&families(), &node(), now, now);
        let Data::Histogram(histogram) = find(&request, "tuneprobe_block_service_seconds") else {
            panic!("not a histogram")
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, IO_BUCKETS);
        assert_eq!((point.count, point.sum), (3, Some(12.5)));
        // 0 up to 0.0005, both samples under 0.001, and one above the highest bound.
        let mut expected = vec![0; IO_BUCKETS.len() + 1];
        expected[3] = 2;
        expected[IO_BUCKETS.len()] = 1;
        assert_eq!(point.bucket_counts, expected);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
    }

    #[test]
    fn http_endpoints_get_the_metrics_path_once_and_grpc_wants_plain_http() {
        let http = |url| {
            Pusher::new(url, Protocol::Http, vec![])
                .unwrap()
                .endpoint()
                .to_string()
        };
        assert_eq!(http("http://c:4318"), "http://c:4318/v1/metrics");
        assert_eq!(http("http://c:4318/"), "http://c:4318/v1/metrics");
        assert_eq!(
            http("http://vm:8428/opentelemetry/v1/metrics"),
            "http://vm:8428/opentelemetry/v1/metrics"
        );
        assert!(Pusher::new("c:4318", Protocol::Http, vec![]).is_err());
        assert!(Pusher::new("https://c:4317", Protocol::Grpc, vec![]).is_err());
    }

    /// A request as received, with its `authorization` header.
    type Received = (ExportMetricsServiceRequest, Option<String>);

    /// A gRPC receiver in the test: what it got.
    #[derive(Default, Clone)]
    struct Receiver(std::sync::Arc<std::sync::Mutex<Vec<Received>>>);

    #[tonic::async_trait]
    impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService
        for Receiver
    {
        async fn export(
            &self,
            request: tonic::Request<ExportMetricsServiceRequest>,
        ) -> Result<
            tonic::Response<
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse,
            >,
            tonic::Status,
        > {
            let token = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.0.lock().unwrap().push((request.into_inner(), token));
            Ok(tonic::Response::new(Default::default()))
        }
    }

    #[test]
    fn grpc_pushes_arrive_whole_with_their_headers_and_a_missing_receiver_is_an_error() {
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
            let address = incoming.local_addr().unwrap();
            let receiver = Receiver::default();
            let server = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(receiver.clone()))
                    .serve_with_incoming(incoming),
            );
            let pusher = Pusher::new(
                &format!("http://{address}"),
                Protocol::Grpc,
                vec![("Authorization".into(), "Bearer t0ken".into())],
            )
            .unwrap();
            let now = SystemTime::now();
            let sent = request(&families(), &node(), now, now);
            pusher.push(sent.clone()).await.unwrap();
            let got = receiver.0.lock().unwrap().clone();
            assert_eq!(got, [(sent.clone(), Some("Bearer t0ken".to_string()))]);
            server.abort();
            // Where nothing listens: an error, not a hang or a panic.
            let closed = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap();
            let nowhere = Pusher::new(&format!("http://{closed}"), Protocol::Grpc, vec![]);
            let err = nowhere.unwrap().push(sent).await.unwrap_err();
            assert!(matches!(err, PushError::Grpc { .. }), "{err}");
        });
    }

    #[test]
    fn headers_are_name_equals_value() {
        assert_eq!(
            parse_header("Authorization=Bearer abc=="),
            Ok(("Authorization".to_string(), "Bearer abc==".to_string()))
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name=x").is_err());
    }
}
