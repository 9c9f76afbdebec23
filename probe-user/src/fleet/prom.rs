//! A client of Prometheus's HTTP query API (`/api/v1/query`, `/api/v1/query_range`), so
//! that anything speaking it (Prometheus, Thanos, Mimir, VictoriaMetrics) serves the
//! fleet view; and the label matchers `--canary` and `--control` are written in.

use std::{collections::BTreeMap, fs, path::PathBuf, sync::Mutex, time::Duration};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a PEM certificate")]
    Certificate(PathBuf),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("Prometheus refused `{query}`: {error_type}: {error}")]
    Refused {
        query: String,
        error_type: String,
        error: String,
    },
    #[error("an answer to `{query}` that is not the query API's: {reason}")]
    Garbage { query: String, reason: String },
}

/// Where Prometheus is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct PromConfig {
    /// `http(s)://host:port`, with a path prefix where one is served (`/prometheus`).
    pub base_url: String,
    /// A bearer token, re-read before each request (projected tokens rotate).
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM CA for an https URL; the system's roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (a lab's self-signed Prometheus).
    pub insecure: bool,
    /// Headers sent with every request, as (name, value): a Mimir or Cortex tenant's
    /// `X-Scope-OrgID`, a proxy's own.
    pub headers: Vec<(String, String)>,
}

/// One series of a query's result: its labels and its `(unix seconds, value)` points
/// (one point for an instant query).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

pub struct Prometheus {
    agent: ureq::Agent,
    base_url: String,
    token_file: Option<PathBuf>,
    headers: Vec<(String, String)>,
    /// The `warnings` of every answer so far, each once, with the query it came with:
    /// a 200 with warnings is a partial answer (Thanos with a store down) that must not
    /// look whole.
    warnings: Mutex<Vec<String>>,
}

/// Answers are bounded: a fleet query is a few thousand series of a few hundred points.
const MAX_BODY: u64 = 512 << 20;

/// The most points per series one range query may ask for: Prometheus, Thanos, Mimir
/// and VictoriaMetrics refuse more than 11,000 (a longer range is split).
pub const MAX_POINTS: u64 = 11_000;

/// Sent with every query, ignored by those that do not know them: Thanos must fail
/// rather than answer without a store (`partial_response=false`), and VictoriaMetrics
/// must not answer from its cache of earlier ranges (`nocache=1`), which may predate
/// samples written late or imported with their own timestamps.
const STORE_PARAMS: [(&str, &str); 2] = [("partial_response", "false"), ("nocache", "1")];

impl Prometheus {
    pub fn new(config: &PromConfig) -> Result<Self, PromError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(file) = &config.ca_file {
            let pem = fs::read(file).map_err(|source| PromError::Read {
                path: file.clone(),
                source,
            })?;
            let cert = ureq::tls::Certificate::from_pem(&pem)
                .map_err(|_| PromError::Certificate(file.clone()))?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
        }
        if config.insecure {
            tls = tls.disable_verification(true);
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            agent,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            token_file: config.bearer_token_file.clone(),
            headers: config.headers.clone(),
            warnings: Mutex::default(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The warnings the answers so far came with, each once, in the order they came.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A range query: every series with a point at each `step` from `start` to `end`,
    /// asked in pieces of at most [`MAX_POINTS`] points and stitched together per series.
    pub fn query_range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Series>, PromError> {
        let mut stitched = Stitched::default();
        for (from, to) in pieces(start, end, step) {
            let answer = self.call(
                "/api/v1/query_range",
                query,
                &[
                    ("start", format!("{from:.3}")),
                    ("end", format!("{to:.3}")),
                    ("step", format!("{step:.3}")),
                ],
            )?;
            stitched.add(answer);
        }
        Ok(stitched.series)
    }

    /// An instant query at `time`.
    pub fn query(&self, query: &str, time: f64) -> Result<Vec<Series>, PromError> {
        self.call("/api/v1/query", query, &[("time", format!("{time:.3}"))])
    }

    /// POST with a form body, which every implementation of the API accepts and which
    /// keeps long selectors (a regex of node names) out of URL length limits.
    fn call(
        &self,
        path: &str,
        query: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<Series>, PromError> {
        let url = format!("{}{path}", self.base_url);
        let mut request = self.agent.post(&url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(file) = &self.token_file {
            let token = fs::read_to_string(file).map_err(|source| PromError::Read {
                path: file.clone(),
                source,
            })?;
            request = request.header("Authorization", &format!("Bearer {}", token.trim()));
        }
        let form = std::iter::once(("query", query))
            .chain(params.iter().map(|(k, v)| (*k, v.as_str())))
            .chain(STORE_PARAMS);
        let response = request.send_form(form).map_err(|e| PromError::Http {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .into_with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| PromError::Http {
                url: url.clone(),
                message: e.to_string(),
            })?;
        // 400 and 422 carry the API's own error object: say what Prometheus said.
        if status != 200 && !matches!(status, 400 | 422 | 503) {
            return Err(PromError::Status {
                url,
                status,
                body: body.chars().take(300).collect(),
            });
        }
        let answer = parse_response(query, &body)?;
        if !answer.warnings.is_empty() {
            let mut seen = self
                .warnings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for warning in answer.warnings {
                let warning = format!("{warning} (answering `{query}`)");
                if !seen.contains(&warning) {
                    seen.push(warning);
                }
            }
        }
        Ok(answer.series)
    }
}

/// `[start, end]` on the grid of `step` in pieces of at most [`MAX_POINTS`] points
/// each, in order, none sharing a point.
pub fn pieces(start: f64, end: f64, step: f64) -> Vec<(f64, f64)> {
    // The points from `start`: the last one at or before `end` (a hair of float error
    // kept in).
    let points = ((end - start) / step + 1e-9).floor().max(0.0) as u64 + 1;
    (0..points.div_ceil(MAX_POINTS))
        .map(|piece| {
            let first = piece * MAX_POINTS;
            let last = (first + MAX_POINTS - 1).min(points - 1);
            let from = start + first as f64 * step;
            let to = if last == points - 1 {
                end
            } else {
                start + last as f64 * step
            };
            (from, to)
        })
        .collect()
}

/// The series of several pieces of one range as one answer: the same labels are the
/// same series, its points in the order of the pieces, a point a store repeats at a seam
/// (aligning a piece to its step) kept once. Series keep the order they first came in.
#[derive(Default)]
struct Stitched {
    series: Vec<Series>,
    index: BTreeMap<BTreeMap<String, String>, usize>,
}

impl Stitched {
    fn add(&mut self, piece: Vec<Series>) {
        for series in piece {
            match self.index.get(&series.labels) {
                Some(&i) => {
                    let known = &mut self.series[i].points;
                    let last = known.last().map_or(f64::NEG_INFINITY, |p| p.0);
                    known.extend(series.points.into_iter().filter(|p| p.0 > last));
                }
                None => {
                    self.index.insert(series.labels.clone(), self.series.len());
                    self.series.push(series);
                }
            }
        }
    }
}

/// One answer of the query API: its series, and the warnings it came with (a partial
/// answer: a store that failed behind Thanos, a limit a store applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub series: Vec<Series>,
    pub warnings: Vec<String>,
}

/// Parses the query API's JSON envelope: `{"status": "success", "data": {"resultType":
/// "matrix"|"vector", "result": [...]}, "warnings": [...]}`, or its error object. Values
/// are strings (`"0.5"`, `"NaN"`, `"+Inf"`).
pub fn parse_response(query: &str, body: &str) -> Result<Answer, PromError> {
    let garbage = |reason: String| PromError::Garbage {
        query: query.to_string(),
        reason,
    };
    let json: Value = serde_json::from_str(body).map_err(|e| {
        garbage(format!(
            "{e}: {}",
            body.chars().take(200).collect::<String>()
        ))
    })?;
    if json["status"] != "success" {
        return Err(PromError::Refused {
            query: query.to_string(),
            error_type: json["errorType"].as_str().unwrap_or("?").to_string(),
            error: json["error"].as_str().unwrap_or("?").to_string(),
        });
    }
    let data = &json["data"];
    let result = data["result"]
        .as_array()
        .ok_or_else(|| garbage("no data.result".into()))?;
    let point = |p: &Value| -> Result<(f64, f64), PromError> {
        let time = p[0]
            .as_f64()
            .ok_or_else(|| garbage(format!("a point without a time: {p}")))?;
        let value = p[1]
            .as_str()
            .and_then(parse_value)
            .ok_or_else(|| garbage(format!("a point without a value: {p}")))?;
        Ok((time, value))
    };
    let matrix = match data["resultType"].as_str() {
        Some("matrix") => true,
        Some("vector") => false,
        // Scalars and strings: not what a fleet query asks for.
        other => return Err(garbage(format!("result type {other:?}"))),
    };
    let mut out = Vec::with_capacity(result.len());
    for series in result {
        let labels = series["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let points = if matrix {
            series["values"]
                .as_array()
                .ok_or_else(|| garbage("a matrix series without values".into()))?
                .iter()
                .map(point)
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![point(&series["value"])?]
        };
        out.push(Series { labels, points });
    }
    let warnings = json["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| w.as_str().map_or_else(|| w.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Answer {
        series: out,
        warnings,
    })
}

/// Prometheus's number format: Go's float syntax plus `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// Label matchers as PromQL writes them inside braces: `node=~"pool-b-.*"`,
/// `node="n1",zone!="a"`; braces around them are accepted too.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matchers(Vec<Matcher>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    label: String,
    op: &'static str,
    /// The value as written between the quotes (escapes kept, so it renders back as is).
    value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} (expected label matchers such as node=~\"pool-b-.*\" or node=\"n1\",zone!=\"a\")")]
pub struct MatcherError(String);

impl Matchers {
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let mut rest = text.trim();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner
                .strip_suffix('}')
                .ok_or_else(|| MatcherError("an opening brace without a closing one".into()))?
                .trim();
        }
        let mut out = Vec::new();
        while !rest.is_empty() {
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let label = &rest[..name_end];
            if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(MatcherError(format!("not a label name at `{rest}`")));
            }
            let after_name = rest[name_end..].trim_start();
            let op = ["=~", "!~", "!=", "="]
                .into_iter()
                .find(|op| after_name.starts_with(op))
                .ok_or_else(|| MatcherError(format!("no =, !=, =~ or !~ after `{label}`")))?;
            let quoted = after_name[op.len()..].trim_start();
            let quote = quoted
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or_else(|| MatcherError(format!("the value of `{label}` is not quoted")))?;
            // The closing quote is the first one not escaped by a backslash.
            let body = &quoted[1..];
            let mut end = None;
            let mut escaped = false;
            for (i, c) in body.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    c if c == quote => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end =
                end.ok_or_else(|| MatcherError(format!("the value of `{label}` is not closed")))?;
            let value = body[..end].to_string();
            // Always rendered in double quotes: a bare double quote from a single-quoted
            // value needs its escape.
            let value = if quote == '\'' {
                value.replace('"', "\\\"")
            } else {
                value
            };
            out.push(Matcher {
                label: label.to_string(),
                op,
                value,
            });
            rest = body[end + 1..].trim_start();
            if let Some(next) = rest.strip_prefix(',') {
                rest = next.trim_start();
            } else if !rest.is_empty() {
                return Err(MatcherError(format!("expected a comma at `{rest}`")));
            }
        }
        Ok(Self(out))
    }

    /// `label="value"` for an exact match, the value escaped for a PromQL string.
    pub fn equal(label: &str, value: &str) -> Self {
        Self(vec![Matcher {
            label: label.to_string(),
            op: "=",
            value: escape_string(value),
        }])
    }

    /// `label=~"a|b|c"`: exactly these values (each a literal, not a pattern).
    pub fn one_of<'a>(label: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        let alternatives: Vec<String> = values.into_iter().map(escape_regex).collect();
        Self(vec![Matcher {
            label: label.to_string(),
            op: "=~",
            value: escape_string(&alternatives.join("|")),
        }])
    }

    pub fn and(mut self, other: &Self) -> Self {
        self.0.extend(other.0.iter().cloned());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `metric{matchers}`.
    pub fn select(&self, metric: &str) -> String {
        format!("{metric}{{{self}}}")
    }
}

impl std::fmt::Display for Matchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|m| format!("{}{}\"{}\"", m.label, m.op, m.value))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// A PromQL double-quoted string's content.
fn escape_string(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// RE2 metacharacters escaped, so a node name matches itself only.
fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_matrix() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"node":"a","pod":"api-1"},"values":[[1700000000,"1"],[1700000030.5,"NaN"],[1700000061,"+Inf"]]},
            {"metric":{},"values":[]}]}}"#;
        let series = parse_response("q", body).unwrap().series;
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].label("node"), "a");
        assert_eq!(series[0].label("missing"), "");
        assert_eq!(series[0].points[0], (1_700_000_000.0, 1.0));
        assert_eq!(series[0].points[1].0, 1_700_000_030.5);
        assert!(series[0].points[1].1.is_nan());
        assert_eq!(series[0].points[2].1, f64::INFINITY);
        assert!(series[1].points.is_empty());
    }

    #[test]
    fn parses_a_vector_and_errors() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"node":"b"},"value":[1700000000.123,"42"]}]}}"#;
        let series = parse_response("q", body).unwrap().series;
        assert_eq!(series[0].points, vec![(1_700_000_000.123, 42.0)]);

        let refused =
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let err = parse_response("sum(", refused).unwrap_err();
        assert!(
            matches!(&err, PromError::Refused { error_type, .. } if error_type == "bad_data"),
            "{err}"
        );
        assert!(err.to_string().contains("parse error at char 5"), "{err}");

        for garbage in [
            "<html>",
            r#"{"status":"success","data":{}}"#,
            r#"{"status":"success","data":{"resultType":"scalar","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#,
        ] {
            assert!(
                matches!(parse_response("q", garbage), Err(PromError::Garbage { .. })),
                "{garbage}"
            );
        }
    }

    /// One request as a tiny local server received it.
    #[derive(Debug, Clone)]
    struct Received {
        path: String,
        /// Header names lowercased.
        headers: BTreeMap<String, String>,
        form: BTreeMap<String, String>,
    }

    /// `application/x-www-form-urlencoded` decoded.
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    /// A local HTTP server that answers `requests` requests, each with the body `answer`
    /// gives for it, one connection each; joined, it gives what it received.
    fn store(
        requests: usize,
        answer: impl Fn(&Received) -> String + Send + 'static,
    ) -> (u16, std::thread::JoinHandle<Vec<Received>>) {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut received = Vec::new();
            for _ in 0..requests {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap().to_string();
                let mut headers = BTreeMap::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let Some((name, value)) = header.trim_end().split_once(':') else {
                        break;
                    };
                    headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
                }
                let length: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let form = String::from_utf8(body)
                    .unwrap()
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (decode(k), decode(v)))
                    .collect();
                let request = Received {
                    path,
                    headers,
                    form,
                };
                let body = answer(&request);
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                received.push(request);
            }
            received
        });
        (port, server)
    }

    fn client(base_url: String, headers: &[(&str, &str)]) -> Prometheus {
        Prometheus::new(&PromConfig {
            base_url,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
            ..PromConfig::default()
        })
        .unwrap()
    }

    /// Mimir: a tenant header on every request, the API under `/prometheus`; and the
    /// parameters Thanos and VictoriaMetrics read sent along.
    #[test]
    fn a_tenant_header_and_a_path_prefix_are_kept() {
        let (port, server) = store(2, |_| {
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"node":"a"},"value":[100,"1"]}]}}"#.into()
        });
        let prometheus = client(
            format!("http://127.0.0.1:{port}/prometheus/"),
            &[("X-Scope-OrgID", "team-a"), ("X-Extra", "a:b c")],
        );
        let series = prometheus.query("up{node=~\"a|b\"}", 100.0).unwrap();
        assert_eq!(series[0].points, [(100.0, 1.0)]);
        prometheus.query("up", 200.0).unwrap();
        let received = server.join().unwrap();
        assert_eq!(received.len(), 2);
        for r in &received {
            assert_eq!(r.path, "/prometheus/api/v1/query", "{r:?}");
            assert_eq!(r.headers["x-scope-orgid"], "team-a", "{r:?}");
            assert_eq!(r.headers["x-extra"], "a:b c", "{r:?}");
            assert_eq!(r.form["partial_response"], "false", "{r:?}");
            assert_eq!(r.form["nocache"], "1", "{r:?}");
            assert!(!r.headers.contains_key("authorization"), "{r:?}");
        }
        assert_eq!(received[0].form["query"], "up{node=~\"a|b\"}");
        assert_eq!(received[0].form["time"], "100.000");
        assert_eq!(prometheus.warnings(), Vec::<String>::new());
    }

    /// Thanos with a store down: 200, the data of the stores that answered, and
    /// `warnings`; kept once each, with the query they came with.
    #[test]
    fn warnings_of_a_partial_answer_are_kept() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"node":"a"},"values":[[0,"1"],[10,"2"]]}]},"warnings":["receive partial response: store 10.0.0.7:10901 unavailable"]}"#;
        let answer = parse_response("q", body).unwrap();
        assert_eq!(
            answer.warnings,
            ["receive partial response: store 10.0.0.7:10901 unavailable"]
        );
        assert_eq!(answer.series[0].points, [(0.0, 1.0), (10.0, 2.0)]);
        let (port, server) = store(3, move |_| body.into());
        let prometheus = client(format!("http://127.0.0.1:{port}"), &[]);
        for _ in 0..2 {
            prometheus.query_range("q1", 0.0, 10.0, 10.0).unwrap();
        }
        prometheus.query_range("q2", 0.0, 10.0, 10.0).unwrap();
        server.join().unwrap();
        assert_eq!(
            prometheus.warnings(),
            [
                "receive partial response: store 10.0.0.7:10901 unavailable (answering `q1`)",
                "receive partial response: store 10.0.0.7:10901 unavailable (answering `q2`)"
            ]
        );
    }

    #[test]
    fn ranges_are_cut_at_the_stores_limit() {
        assert_eq!(pieces(0.0, 29_999.0, 1.0).len(), 3);
        assert_eq!(
            pieces(100.0, 100.0 + 10_999.0 * 60.0, 60.0),
            [(100.0, 100.0 + 10_999.0 * 60.0)]
        );
        // One point more is two requests; an end off the grid stays the end.
        assert_eq!(
            pieces(0.0, 11_000.5, 1.0),
            [(0.0, 10_999.0), (11_000.0, 11_000.5)]
        );
        assert_eq!(pieces(5.0, 5.0, 1.0), [(5.0, 5.0)]);
    }

    /// 30,000 points a series: three requests of at most 11,000 points, stitched into
    /// one series each. The store repeats the point before each piece (as one that
    /// aligns a range to its step may): kept once.
    #[test]
    fn a_long_range_is_asked_in_pieces_and_stitched() {
        let (port, server) = store(3, |r| {
            let from: f64 = r.form["start"].parse().unwrap();
            let to: f64 = r.form["end"].parse().unwrap();
            let first = if from > 0.0 { from - 1.0 } else { from };
            let points: Vec<String> = (first as u64..=to as u64)
                .map(|t| format!("[{t},\"{}\"]", t * 2))
                .collect();
            // Series `b` only from the second piece on.
            let b = if from > 0.0 {
                format!(
                    r#",{{"metric":{{"node":"b"}},"values":[{}]}}"#,
                    points.join(",")
                )
            } else {
                String::new()
            };
            format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{"node":"a"}},"values":[{}]}}{b}]}}}}"#,
                points.join(",")
            )
        });
        let prometheus = client(format!("http://127.0.0.1:{port}"), &[]);
        let series = prometheus.query_range("q", 0.0, 29_999.0, 1.0).unwrap();
        let received = server.join().unwrap();
        let ranges: Vec<(&str, &str, &str)> = received
            .iter()
            .map(|r| {
                (
                    r.form["start"].as_str(),
                    r.form["end"].as_str(),
                    r.form["step"].as_str(),
                )
            })
            .collect();
        assert_eq!(
            ranges,
            [
                ("0.000", "10999.000", "1.000"),
                ("11000.000", "21999.000", "1.000"),
                ("22000.000", "29999.000", "1.000")
            ]
        );
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].label("node"), "a");
        let expected: Vec<(f64, f64)> = (0..30_000)
            .map(|t| (f64::from(t), f64::from(t * 2)))
            .collect();
        assert_eq!(series[0].points, expected);
        assert_eq!(series[1].label("node"), "b");
        assert_eq!(series[1].points, expected[10_999..]);
    }

    #[test]
    fn matchers_round_trip() {
        let m = Matchers::parse(r#"node=~"pool-b-.*""#).unwrap();
        assert_eq!(m.to_string(), r#"node=~"pool-b-.*""#);
        let m = Matchers::parse(r#"{ node = "n1" , zone!='a"b' }"#).unwrap();
        assert_eq!(m.to_string(), r#"node="n1",zone!="a\"b""#);
        let m = Matchers::parse(r#"node!~"x\"y,z", k="v""#).unwrap();
        assert_eq!(m.to_string(), r#"node!~"x\"y,z",k="v""#);
        assert!(Matchers::parse("").unwrap().is_empty());
        for bad in [
            "node",
            "node=n1",
            r#"node="n1"#,
            r#"1node="a""#,
            r#"node="a" zone="b""#,
            r#"{node="a""#,
        ] {
            assert!(Matchers::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_alternatives_are_escaped() {
        let m = Matchers::one_of("node", ["ip-10-0-0-1.ec2.internal", "a+b"]);
        assert_eq!(
            m.select("up"),
            r#"up{node=~"ip-10-0-0-1\\.ec2\\.internal|a\\+b"}"#
        );
        let m = Matchers::equal("knob", r#"we"ird\"#).and(&Matchers::parse(r#"x="y""#).unwrap());
        assert_eq!(m.to_string(), r#"knob="we\"ird\\",x="y""#);
    }
}
