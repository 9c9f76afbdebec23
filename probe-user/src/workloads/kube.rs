//! Pod names and labels from the Kubernetes API: a list, then a watch of the pods on this
//! node (`spec.nodeName`), resumed from the last resource version when the stream drops,
//! and a fresh list when the server answers 410 Gone (the version is too old).
//!
//! Blocking HTTP on a thread of its own: the watch is one long-lived request.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The service-account files every pod gets.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA certificate in {0} is not PEM")]
    Certificate(PathBuf),
    #[error("request to the Kubernetes API failed: {0}")]
    Http(String),
    #[error("the Kubernetes API answered {status} for {url}")]
    Status { status: u16, url: String },
    #[error("the Kubernetes API sent something that is not a pod list: {0}")]
    Garbage(String),
    #[error("kubeconfig {0}")]
    Kubeconfig(String),
}

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// `https://10.96.0.1:443`, or `http://127.0.0.1:8001` (kubectl proxy, tests).
    pub base_url: String,
    /// Bearer token, re-read before each request (service-account tokens rotate).
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// A fixed bearer token (from a kubeconfig).
    pub token: Option<String>,
    /// CA and client certificate material given inline (PEM), as kubeconfigs do.
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl ApiConfig {
    /// The in-cluster configuration, when running in a pod with a service account.
    pub fn in_cluster() -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Some(Self {
            base_url: format!("https://{host}:{port}"),
            token_file: Some(Path::new(SERVICE_ACCOUNT).join("token")),
            ca_file: Some(Path::new(SERVICE_ACCOUNT).join("ca.crt")),
            ..Self::default()
        })
    }

    /// The current context of a kubeconfig file: server, CA, and a token, token file or
    /// client certificate (inline `-data` or file paths, relative to the file).
    pub fn from_kubeconfig(path: &Path) -> Result<Self, KubeError> {
        let text = fs::read_to_string(path).map_err(|source| KubeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Value = serde_norway::from_str(&text)
            .map_err(|e| KubeError::Kubeconfig(format!("{}: {e}", path.display())))?;
        let bad = |what: &str| KubeError::Kubeconfig(format!("{}: {what}", path.display()));
        let current = config["current-context"]
            .as_str()
            .ok_or_else(|| bad("no current-context"))?;
        let named = |list: &str, name: &str, field: &str| -> Option<Value> {
            config[list]
                .as_array()?
                .iter()
                .find(|entry| entry["name"].as_str() == Some(name))
                .map(|entry| entry[field].clone())
        };
        let context = named("contexts", current, "context")
            .ok_or_else(|| bad(&format!("no context named {current}")))?;
        let cluster_name = context["cluster"]
            .as_str()
            .ok_or_else(|| bad("context has no cluster"))?;
        let cluster = named("clusters", cluster_name, "cluster")
            .ok_or_else(|| bad(&format!("no cluster named {cluster_name}")))?;
        let user = context["user"]
            .as_str()
            .and_then(|name| named("users", name, "user"))
            .unwrap_or(Value::Null);
        let base = path.parent().unwrap_or(Path::new("."));
        let material =
            |value: &Value, data_key: &str, file_key: &str| -> Result<Option<Vec<u8>>, KubeError> {
                if let Some(data) = value[data_key].as_str() {
                    use base64::Engine as _;
                    return base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .map(Some)
                        .map_err(|e| bad(&format!("{data_key} is not base64: {e}")));
                }
                match value[file_key].as_str() {
                    Some(file) => {
                        let file = base.join(file);
                        fs::read(&file)
                            .map(Some)
                            .map_err(|source| KubeError::Read { path: file, source })
                    }
                    None => Ok(None),
                }
            };
        Ok(Self {
            base_url: cluster["server"]
                .as_str()
                .ok_or_else(|| bad("cluster has no server"))?
                .to_string(),
            ca_pem: material(
                &cluster,
                "certificate-authority-data",
                "certificate-authority",
            )?,
            token: user["token"].as_str().map(str::to_string),
            token_file: user["tokenFile"].as_str().map(|f| base.join(f)),
            client_cert_pem: material(&user, "client-certificate-data", "client-certificate")?,
            client_key_pem: material(&user, "client-key-data", "client-key")?,
            ca_file: None,
        })
    }
}

/// What the API says about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Container ID (64 hex, runtime prefix removed) -> container name.
    pub containers: HashMap<String, String>,
}

impl PodMeta {
    /// Reads a pod object; `None` if it lacks a UID, namespace or name.
    pub fn from_object(object: &Value) -> Option<(String, Self)> {
        let metadata = &object["metadata"];
        let uid = metadata["uid"].as_str()?.to_string();
        let labels = metadata["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let mut containers = HashMap::new();
        for statuses in [
            "containerStatuses",
            "initContainerStatuses",
            "ephemeralContainerStatuses",
        ] {
            for status in object["status"][statuses].as_array().into_iter().flatten() {
                let (Some(name), Some(id)) =
                    (status["name"].as_str(), status["containerID"].as_str())
                else {
                    continue;
                };
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
                let id = id.rsplit("://").next().unwrap_or(id);
                containers.insert(id.to_string(), name.to_string());
            }
        }
        Some((
            uid,
            Self {
                namespace: metadata["namespace"].as_str()?.to_string(),
                name: metadata["name"].as_str()?.to_string(),
                labels,
                containers,
            },
        ))
    }
}

/// The pods of this node, kept current by the watcher. Deleted pods stay for a grace
/// period so reports about their last moments still name them.
#[derive(Debug, Default)]
pub struct PodStore {
    pods: HashMap<String, (PodMeta, Option<Instant>)>,
    /// Lists, watch restarts and errors, for tests and logs.
    pub lists: u64,
    pub resumes: u64,
}

impl PodStore {
    pub fn pod(&self, uid: &str) -> Option<&PodMeta> {
        self.pods.get(uid).map(|(pod, _)| pod)
    }

    pub fn container(&self, id: &str) -> Option<(&PodMeta, &str)> {
        self.pods
            .values()
            .find_map(|(pod, _)| pod.containers.get(id).map(|name| (pod, name.as_str())))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn upsert(&mut self, uid: String, pod: PodMeta) {
        self.pods.insert(uid, (pod, None));
    }

    fn delete(&mut self, uid: &str) {
        if let Some((_, deleted)) = self.pods.get_mut(uid) {
            deleted.get_or_insert_with(Instant::now);
        }
    }

    /// After a fresh list: pods missing from it count as deleted now.
    pub(crate) fn replace(&mut self, listed: HashMap<String, PodMeta>) {
        let now = Instant::now();
        for (uid, (_, deleted)) in &mut self.pods {
            if !listed.contains_key(uid) {
                deleted.get_or_insert(now);
            }
        }
        for (uid, pod) in listed {
            self.upsert(uid, pod);
        }
    }

    pub(crate) fn forget_deleted(&mut self, grace: Duration) {
        self.pods
            .retain(|_, (_, deleted)| deleted.is_none_or(|at| at.elapsed() <= grace));
    }
}

/// Lists and watches the pods on `node`, forever, on a thread of its own.
pub struct PodWatcher {
    store: Arc<Mutex<PodStore>>,
}

impl PodWatcher {
    pub fn start(config: ApiConfig, node: String, grace: Duration) -> Result<Self, KubeError> {
        let client = Client::new(&config)?;
        let store = Arc::new(Mutex::new(PodStore::default()));
        let shared = Arc::clone(&store);
        thread::Builder::new()
            .name("pod-watcher".into())
            .spawn(move || watch_forever(&client, &node, &shared, grace))
            .map_err(|e| KubeError::Http(e.to_string()))?;
        Ok(Self { store })
    }

    pub fn store(&self) -> Arc<Mutex<PodStore>> {
        Arc::clone(&self.store)
    }
}

struct Client {
    agent: ureq::Agent,
    base_url: String,
    token_file: Option<PathBuf>,
    token: Option<String>,
}

impl Client {
    fn new(config: &ApiConfig) -> Result<Self, KubeError> {
        let ca_pem = match (&config.ca_pem, &config.ca_file) {
            (Some(pem), _) => Some((pem.clone(), PathBuf::from("certificate-authority-data"))),
            (None, Some(file)) => Some((
                fs::read(file).map_err(|source| KubeError::Read {
                    path: file.clone(),
                    source,
                })?,
                file.clone(),
            )),
            (None, None) => None,
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some((pem, origin)) = ca_pem {
            let cert = ureq::tls::Certificate::from_pem(&pem)
                .map_err(|_| KubeError::Certificate(origin))?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
        }
        if let (Some(cert), Some(key)) = (&config.client_cert_pem, &config.client_key_pem) {
            let cert = ureq::tls::Certificate::from_pem(cert)
                .map_err(|_| KubeError::Certificate("client-certificate".into()))?;
            let key = ureq::tls::PrivateKey::from_pem(key)
                .map_err(|_| KubeError::Certificate("client-key".into()))?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            agent,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            token_file: config.token_file.clone(),
            token: config.token.clone(),
        })
    }

    /// GET with the (re-read: it rotates) bearer token; the body as a stream.
    fn get(&self, path_and_query: &str) -> Result<ureq::Body, KubeError> {
        let url = format!("{}{path_and_query}", self.base_url);
        let mut request = self.agent.get(&url);
        let token = match &self.token_file {
            Some(file) => Some(fs::read_to_string(file).map_err(|source| KubeError::Read {
                path: file.clone(),
                source,
            })?),
            None => self.token.clone(),
        };
        if let Some(token) = token {
            request = request.header("Authorization", &format!("Bearer {}", token.trim()));
        }
        let response = request.call().map_err(|e| KubeError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(KubeError::Status { status, url });
        }
        Ok(response.into_body())
    }
}

fn selector(node: &str) -> String {
    // `spec.nodeName=<node>`, URL-encoded.
    format!("fieldSelector=spec.nodeName%3D{node}")
}

/// One list: every pod on the node, and the resource version to watch from.
fn list(client: &Client, node: &str) -> Result<(HashMap<String, PodMeta>, String), KubeError> {
    let body = client.get(&format!("/api/v1/pods?{}", selector(node)))?;
    let text = body
        .into_with_config()
        .limit(256 << 20)
        .read_to_string()
        .map_err(|e| KubeError::Http(e.to_string()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| KubeError::Garbage(e.to_string()))?;
    let version = json["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| KubeError::Garbage("no metadata.resourceVersion".into()))?
        .to_string();
    let items = json["items"]
        .as_array()
        .ok_or_else(|| KubeError::Garbage("no items".into()))?;
    Ok((
        items.iter().filter_map(PodMeta::from_object).collect(),
        version,
    ))
}

/// How a watch stream ended.
enum WatchEnd {
    /// The stream closed or broke: watch again from this version.
    Resume(String),
    /// 410 Gone: the version is too old, list again.
    Relist,
}

fn watch(client: &Client, node: &str, version: String, store: &Mutex<PodStore>) -> WatchEnd {
    let path = format!(
        "/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion={version}&timeoutSeconds=300&{}",
        selector(node)
    );
    let body = match client.get(&path) {
        Ok(body) => body,
        Err(KubeError::Status { status: 410, .. }) => return WatchEnd::Relist,
        Err(err) => {
            log::warn!("pod watch: {err}");
            return WatchEnd::Resume(version);
        }
    };
    let mut version = version;
    let reader = BufReader::new(body.into_reader());
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            log::warn!("pod watch: not a JSON event, ignored: {line:.200}");
            continue;
        };
        let object = &event["object"];
        match event["type"].as_str() {
            Some("ERROR") => {
                if object["code"].as_u64() == Some(410) {
                    return WatchEnd::Relist;
                }
                log::warn!("pod watch error: {object}");
                break;
            }
            Some(kind @ ("ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK")) => {
                if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                    version = v.to_string();
                }
                if kind == "BOOKMARK" {
                    continue;
                }
                let Some((uid, pod)) = PodMeta::from_object(object) else {
                    continue;
                };
                let mut store = lock(store);
                if kind == "DELETED" {
                    store.delete(&uid);
                } else {
                    store.upsert(uid, pod);
                }
            }
            _ => log::warn!("pod watch: unknown event, ignored: {line:.200}"),
        }
    }
    WatchEnd::Resume(version)
}

fn lock(store: &Mutex<PodStore>) -> std::sync::MutexGuard<'_, PodStore> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Between half of `backoff` and all of it, at random: the agents of every node lose an
/// API server together, and must not come back to it in step.
fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    backoff.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
}

fn watch_forever(client: &Client, node: &str, store: &Mutex<PodStore>, grace: Duration) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let version = match list(client, node) {
            Ok((pods, version)) => {
                let mut store = lock(store);
                store.replace(pods);
                store.lists += 1;
                backoff = Duration::from_millis(200);
                version
            }
            Err(err) => {
                log::warn!("listing pods: {err}; the pod log directory names pods meanwhile");
                thread::sleep(jittered(backoff));
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut version = version;
        loop {
            lock(store).forget_deleted(grace);
            match watch(client, node, version, store) {
                WatchEnd::Relist => break,
                WatchEnd::Resume(v) => {
                    version = v;
                    lock(store).resumes += 1;
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_between_half_and_all_of_it() {
        let waits: Vec<Duration> = (0..50).map(|_| jittered(Duration::from_secs(2))).collect();
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_secs(1)..=Duration::from_secs(2)).contains(w))
        );
        assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
    }

    #[test]
    fn reads_pod_objects() {
        let object = serde_json::json!({
            "metadata": {"uid": "u1", "namespace": "shop", "name": "api", "labels": {"app": "api"}},
            "status": {"containerStatuses": [
                {"name": "server", "containerID": "containerd://abc"},
                {"name": "starting"}
            ]}
        });
        let (uid, pod) = PodMeta::from_object(&object).unwrap();
        assert_eq!(uid, "u1");
        assert_eq!(pod.labels["app"], "api");
        assert_eq!(pod.containers["abc"], "server");
        assert_eq!(pod.containers.len(), 1);
        assert!(PodMeta::from_object(&serde_json::json!({"metadata": {"name": "x"}})).is_none());
        assert!(PodMeta::from_object(&serde_json::json!("garbage")).is_none());
    }

    #[test]
    fn reads_the_current_context_of_a_kubeconfig() {
        use base64::Engine as _;
        let dir = std::env::temp_dir().join(format!("tuneprobe-kubeconfig-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ca = base64::engine::general_purpose::STANDARD.encode("-----BEGIN CERTIFICATE-----\n");
        let file = dir.join("config");
        fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: prod\ncontexts:\n- name: dev\n  context: {{cluster: dev, user: dev}}\n- name: prod\n  context: {{cluster: prod, user: admin}}\nclusters:\n- name: dev\n  cluster: {{server: 'https://dev:6443'}}\n- name: prod\n  cluster:\n    server: https://prod.example:6443\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    tokenFile: token\n"
            ),
        )
        .unwrap();
        let config = ApiConfig::from_kubeconfig(&file).unwrap();
        assert_eq!(config.base_url, "https://prod.example:6443");
        assert_eq!(
            config.ca_pem.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        assert_eq!(config.token_file, Some(dir.join("token")));
        fs::write(&file, "current-context: nowhere\ncontexts: []\n").unwrap();
        let err = ApiConfig::from_kubeconfig(&file).unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
        fs::write(&file, ": : not yaml [").unwrap();
        assert!(ApiConfig::from_kubeconfig(&file).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_relist_marks_missing_pods_deleted_and_the_grace_forgets_them() {
        let pod = |name: &str| PodMeta {
            namespace: "ns".into(),
            name: name.into(),
            labels: BTreeMap::new(),
            containers: HashMap::new(),
        };
        let mut store = PodStore::default();
        store.replace(HashMap::from([
            ("a".to_string(), pod("a")),
            ("b".to_string(), pod("b")),
        ]));
        store.replace(HashMap::from([("a".to_string(), pod("a"))]));
        assert!(store.pod("b").is_some(), "kept during the grace period");
        store.forget_deleted(Duration::ZERO);
        thread::sleep(Duration::from_millis(2));
        store.forget_deleted(Duration::ZERO);
        assert!(store.pod("b").is_none());
        assert!(store.pod("a").is_some());
    }
}
