//! Pod names from the Kubernetes API when it is there ([`crate::workloads::kube`]), and from the
//! kubelet's log directories when it is not:
//!
//! - `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` names every pod by UID;
//! - `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` names every
//!   container by ID.
//!
//! Namespace and pod names are DNS labels or subdomains, so they cannot contain `_`,
//! which makes both forms unambiguous.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::workloads::kube::PodStore;

/// Where the kubelet keeps pod logs on a standard node.
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";

/// Names of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub pod: String,
}

/// Names of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerName {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Splits `<namespace>_<pod>_<uid>`.
pub fn parse_pod_dir(name: &str) -> Option<(PodName, String)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((
        PodName {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        },
        uid.to_string(),
    ))
}

/// Splits `<pod>_<namespace>_<container>-<64 hex>.log` into names and container ID.
pub fn parse_container_log(name: &str) -> Option<(ContainerName, String)> {
    let stem = name.strip_suffix(".log")?;
    let mut parts = stem.split('_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || pod.is_empty() || namespace.is_empty() {
        return None;
    }
    let (container, id) = rest.rsplit_once('-')?;
    let valid_id = id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit());
    if container.is_empty() || !valid_id {
        return None;
    }
    Some((
        ContainerName {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        },
        id.to_string(),
    ))
}

/// Pod and container names from the log directories, refreshed on demand. Pods whose
/// directory disappears are kept for a grace period, so a report about a pod that just
/// ended still names it.
#[derive(Debug)]
pub struct PodNames {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    grace: Duration,
    pods: HashMap<String, (PodName, Instant)>,
    containers: HashMap<String, (ContainerName, Instant)>,
    /// The Kubernetes API's view and the container runtime's (CRI), where they are
    /// reachable, asked in this order before the log directories.
    stores: Vec<Arc<Mutex<PodStore>>>,
}

impl PodNames {
    /// `pods_dir` is `/var/log/pods` or its equivalent; container logs are looked for
    /// in its sibling `containers`.
    pub fn new(pods_dir: &Path, grace: Duration) -> Self {
        let containers_dir = pods_dir.parent().map_or_else(
            || PathBuf::from("/var/log/containers"),
            |p| p.join("containers"),
        );
        let mut names = Self {
            pods_dir: pods_dir.to_path_buf(),
            containers_dir,
            grace,
            pods: HashMap::new(),
            containers: HashMap::new(),
            stores: Vec::new(),
        };
        names.refresh();
        names
    }

    /// Asks `store` (the API's pods, then the runtime's) before the log directories;
    /// stores added earlier are asked first.
    pub fn with_store(mut self, store: Arc<Mutex<PodStore>>) -> Self {
        self.stores.push(store);
        self
    }

    /// The first store's answer.
    fn ask<T>(&self, question: impl Fn(&PodStore) -> Option<T>) -> Option<T> {
        self.stores.iter().find_map(|store| {
            question(
                &store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        })
    }

    /// Reads both directories again and forgets entries gone for longer than the grace.
    pub fn refresh(&mut self) {
        let now = Instant::now();
        for name in dir_names(&self.pods_dir) {
            if let Some((pod, uid)) = parse_pod_dir(&name) {
                self.pods.insert(uid, (pod, now));
            }
        }
        for name in dir_names(&self.containers_dir) {
            if let Some((container, id)) = parse_container_log(&name) {
                self.containers.insert(id, (container, now));
            }
        }
        let grace = self.grace;
        self.pods
            .retain(|_, (_, seen)| now.duration_since(*seen) <= grace);
        self.containers
            .retain(|_, (_, seen)| now.duration_since(*seen) <= grace);
    }

    pub fn pod(&self, uid: &str) -> Option<PodName> {
        self.ask(|store| {
            store.pod(uid).map(|p| PodName {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
            })
        })
        .or_else(|| self.pods.get(uid).map(|(pod, _)| pod.clone()))
    }

    pub fn container(&self, id: &str) -> Option<ContainerName> {
        self.ask(|store| {
            store.container(id).map(|(p, name)| ContainerName {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                container: name.to_string(),
            })
        })
        .or_else(|| {
            self.containers
                .get(id)
                .map(|(container, _)| container.clone())
        })
    }

    /// The pod's labels, from the API or the runtime (the log directories have none).
    pub fn labels(&self, uid: &str) -> BTreeMap<String, String> {
        self.ask(|store| store.pod(uid).map(|p| p.labels.clone()))
            .unwrap_or_default()
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f2ad8c6b0e14d38a5c9f7e2b1d0c3a4f2ad8c6b0e14d38a5c9f7e2b1d0c3a4f";

    #[test]
    fn parses_pod_directories() {
        let (pod, uid) =
            parse_pod_dir("shop_api-7f9c4_0b5a3f0e-52c2-4b7e-9f0a-6a1c2e3d4f5a").unwrap();
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.pod, "api-7f9c4");
        assert_eq!(uid, "0b5a3f0e-52c2-4b7e-9f0a-6a1c2e3d4f5a");
        for bad in ["", "a_b", "a_b_c_d", "_b_c", "a__c", "a_b_"] {
            assert_eq!(parse_pod_dir(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_container_log_names() {
        let (c, id) = parse_container_log(&format!("api-7f9c4_shop_server-{CID}.log")).unwrap();
        assert_eq!(
            (c.pod.as_str(), c.namespace.as_str(), c.container.as_str()),
            ("api-7f9c4", "shop", "server")
        );
        assert_eq!(id, CID);
        // Container names may hold dashes: the ID is after the last one.
        let (c, _) = parse_container_log(&format!("p_ns_istio-proxy-{CID}.log")).unwrap();
        assert_eq!(c.container, "istio-proxy");
        for bad in [
            format!("p_ns_c-{CID}"),
            "p_ns_c-abc.log".to_string(),
            format!("p_ns-{CID}.log"),
            format!("p_ns_x_c-{CID}.log"),
        ] {
            assert_eq!(parse_container_log(&bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_directories_and_keeps_gone_pods_for_the_grace_period() {
        let root = std::env::temp_dir().join(format!("tuneprobe-pods-{}", std::process::id()));
        let pods = root.join("pods");
        let containers = root.join("containers");
        let uid = "0b5a3f0e-52c2-4b7e-9f0a-6a1c2e3d4f5a";
        fs::create_dir_all(pods.join(format!("shop_api_{uid}/server"))).unwrap();
        fs::create_dir_all(&containers).unwrap();
        fs::write(containers.join(format!("api_shop_server-{CID}.log")), "").unwrap();

        let mut names = PodNames::new(&pods, Duration::from_secs(3600));
        assert_eq!(names.pod(uid).unwrap().pod, "api");
        assert_eq!(names.container(CID).unwrap().container, "server");
        fs::remove_dir_all(pods.join(format!("shop_api_{uid}"))).unwrap();
        names.refresh();
        assert!(names.pod(uid).is_some(), "kept during the grace period");

        let mut strict = PodNames::new(&pods, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        strict.refresh();
        assert!(strict.pod(uid).is_none());
        fs::remove_dir_all(&root).unwrap();
    }
}
