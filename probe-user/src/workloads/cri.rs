//! Pod and container names from the container runtime, through the same CRI socket the
//! kubelet uses (containerd, CRI-O): for nodes where the Kubernetes API is not at hand
//! (a `kubectl debug` session, an agent without API access). Richer than the pod log
//! directories: labels, and containers named as soon as they exist.
//!
//! `ListPodSandbox` gives each pod's namespace, name, UID and labels; `ListContainers`
//! each container's ID and name. A poller thread relists every [`RELIST`] (the kubelet
//! itself relists every second) into the same store the API watcher fills, so removed
//! pods stay named for the grace period.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ListContainersRequest, ListPodSandboxRequest, VersionRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::workloads::kube::{PodMeta, PodStore};

/// Where containerd and CRI-O listen on a standard node.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
];

/// How often the runtime is asked again.
pub const RELIST: Duration = Duration::from_secs(2);
/// Bound of one CRI call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels the kubelet adds to every sandbox: not the pod's own.
const KUBELET_LABEL_PREFIX: &str = "io.kubernetes.";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("CRI socket {path}: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("CRI {call} on {path}: {status}")]
    Call {
        call: &'static str,
        path: PathBuf,
        status: Box<tonic::Status>,
    },
    #[error("starting the CRI poller: {0}")]
    Thread(std::io::Error),
}

/// The first of [`DEFAULT_SOCKETS`] that exists on the node (below `--host-root`).
pub fn find_socket() -> Option<PathBuf> {
    DEFAULT_SOCKETS
        .iter()
        .map(crate::workloads::host::path)
        .find(|path| path.exists())
}

/// A gRPC channel to a unix socket, connected on first use, each call bounded by
/// `timeout`. Must be called inside a tokio runtime (the channel's worker starts there).
pub fn unix_channel(path: &Path, timeout: Duration) -> Channel {
    let socket = path.to_path_buf();
    // The URI is a placeholder: the connector dials the unix socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
}

/// A CRI client over a unix socket, with its own single-threaded runtime (the callers
/// are plain threads).
pub struct Client {
    path: PathBuf,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
}

impl Client {
    /// Connects and asks the runtime's version, so a wrong path fails now.
    pub fn connect(path: &Path) -> Result<Self, CriError> {
        let connect_error = |message: String| CriError::Connect {
            path: path.to_path_buf(),
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| connect_error(e.to_string()))?;
        let channel = rt.block_on(async { unix_channel(path, CALL_TIMEOUT) });
        let client = Self {
            path: path.to_path_buf(),
            rt,
            runtime: RuntimeServiceClient::new(channel),
        };
        let version = client
            .rt
            .block_on(client.runtime.clone().version(VersionRequest::default()))
            .map_err(|status| connect_error(status.message().to_string()))?
            .into_inner();
        log::info!(
            "pod names from {} {} (CRI {}) at {}",
            version.runtime_name,
            version.runtime_version,
            version.runtime_api_version,
            path.display()
        );
        Ok(client)
    }

    /// Every pod the runtime knows (ready or not), with its containers.
    pub fn list(&self) -> Result<HashMap<String, PodMeta>, CriError> {
        let call_error = |call, status| CriError::Call {
            call,
            path: self.path.clone(),
            status: Box::new(status),
        };
        let sandboxes = self
            .rt
            .block_on(
                self.runtime
                    .clone()
                    .list_pod_sandbox(ListPodSandboxRequest::default()),
            )
            .map_err(|s| call_error("ListPodSandbox", s))?
            .into_inner()
            .items;
        let containers = self
            .rt
            .block_on(
                self.runtime
                    .clone()
                    .list_containers(ListContainersRequest::default()),
            )
            .map_err(|s| call_error("ListContainers", s))?
            .into_inner()
            .containers;
        let mut by_sandbox: HashMap<String, (String, PodMeta)> = sandboxes
            .into_iter()
            .filter_map(|sandbox| {
                let metadata = sandbox.metadata?;
                let labels = sandbox
                    .labels
                    .into_iter()
                    .filter(|(key, _)| !key.starts_with(KUBELET_LABEL_PREFIX))
                    .collect();
                Some((
                    sandbox.id,
                    (
                        metadata.uid,
                        PodMeta {
                            namespace: metadata.namespace,
                            name: metadata.name,
                            labels,
                            containers: HashMap::new(),
                        },
                    ),
                ))
            })
            .collect();
        for container in containers {
            let (Some(metadata), Some((_, pod))) = (
                container.metadata,
                by_sandbox.get_mut(&container.pod_sandbox_id),
            ) else {
                continue;
            };
            pod.containers.insert(container.id, metadata.name);
        }
        // A pod recreated under the same UID has several sandboxes: keep the one with
        // containers, whose names are wanted.
        let mut pods: HashMap<String, PodMeta> = HashMap::new();
        for (uid, pod) in by_sandbox.into_values() {
            match pods.get_mut(&uid) {
                Some(known) => known.containers.extend(pod.containers),
                None => {
                    pods.insert(uid, pod);
                }
            }
        }
        Ok(pods)
    }
}

/// Relists the runtime's pods forever, on a thread of its own.
pub struct CriWatcher {
    store: Arc<Mutex<PodStore>>,
}

impl CriWatcher {
    /// Connects (failing now if the socket does not answer), lists once, then relists
    /// every [`RELIST`] on a thread.
    pub fn start(path: &Path, grace: Duration) -> Result<Self, CriError> {
        let client = Client::connect(path)?;
        let store = Arc::new(Mutex::new(PodStore::default()));
        relist(&client, &store, grace);
        let shared = Arc::clone(&store);
        thread::Builder::new()
            .name("cri-poller".into())
            .spawn(move || {
                loop {
                    thread::sleep(RELIST);
                    relist(&client, &shared, grace);
                }
            })
            .map_err(CriError::Thread)?;
        Ok(Self { store })
    }

    pub fn store(&self) -> Arc<Mutex<PodStore>> {
        Arc::clone(&self.store)
    }
}

fn relist(client: &Client, store: &Mutex<PodStore>, grace: Duration) {
    match client.list() {
        Ok(pods) => {
            let mut store = store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            store.replace(pods);
            store.lists += 1;
            store.forget_deleted(grace);
        }
        // The runtime restarting is no reason to forget names: keep the last list.
        Err(err) => log::warn!("{err}"),
    }
}
