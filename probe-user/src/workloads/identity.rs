//! Who a workload is, in one type: the JSON of `snapshot`, `trace` and `verify` carries
//! it flattened, tables and `top` name it with [`Identity::display_name`], metrics label
//! it with [`Identity::labels`].

use serde::Serialize;

use crate::output::families::Labels;

/// A cgroup (a container, a pod, a system service, the host), a network namespace whose
/// owner is unknown, or the unattributable rest (everything `None`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Identity {
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    pub netns: Option<u32>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// Names from the kubelet's log directories (or the API): `null` when unknown.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
}

impl Identity {
    /// `namespace`, `pod`, `container` for pods; `cgroup` (the path) for everything else,
    /// which is bounded by the number of cgroups on the node and by the workload cap.
    pub fn labels(&self) -> Labels {
        let is_pod = self.pod_uid.is_some();
        let cgroup = match (&self.cgroup_path, self.netns) {
            _ if is_pod => String::new(),
            (Some(path), _) => path.clone(),
            (None, Some(netns)) => format!("netns:{netns}"),
            (None, None) => "unattributed".to_string(),
        };
        vec![
            ("namespace", self.namespace.clone().unwrap_or_default()),
            (
                "pod",
                self.pod
                    .clone()
                    .or_else(|| self.pod_uid.clone())
                    .unwrap_or_default(),
            ),
            (
                "container",
                self.container
                    .clone()
                    .or_else(|| {
                        self.container_id
                            .as_ref()
                            .map(|id| id[..12.min(id.len())].to_string())
                    })
                    .unwrap_or_default(),
            ),
            ("cgroup", cgroup),
        ]
    }

    /// Its name in tables, `top` and `trace` lines, one word (they stay parseable by
    /// splitting on whitespace): `namespace/pod/container` when known, else
    /// `pod:<uid>/<container id>`, the cgroup path, `netns:<inode>` (as in the metrics'
    /// `cgroup` label), or `(unattributed)`.
    pub fn display_name(&self) -> String {
        if let (Some(namespace), Some(pod)) = (&self.namespace, &self.pod) {
            return match &self.container {
                Some(container) => format!("{namespace}/{pod}/{container}"),
                None => format!("{namespace}/{pod}"),
            };
        }
        match (&self.pod_uid, &self.container_id, &self.cgroup_path) {
            (Some(pod), Some(container), _) => {
                format!("pod:{pod}/{}", &container[..12.min(container.len())])
            }
            (Some(pod), None, _) => format!("pod:{pod}"),
            (None, _, Some(path)) => path.clone(),
            (None, _, None) => match self.netns {
                Some(netns) => format!("netns:{netns}"),
                None => "(unattributed)".to_string(),
            },
        }
    }
}

/// The workload a pod belongs to, from the names its controller gives it, so that the
/// same workload's pods are compared (on different nodes by `fleet verify`, side by
/// side by `verify --ab`'s `workload=`): a Deployment's
/// `NAME-<template hash>-<suffix>`, a DaemonSet's or Job's `NAME-<suffix>` (the
/// suffixes use Kubernetes' vowel-free alphabet, so words like `server` are kept), a
/// StatefulSet's `NAME-<ordinal>`. Other names are their own workload.
pub fn workload_name(pod: &str) -> &str {
    const ALPHABET: &str = "bcdfghjklmnpqrstvwxz2456789";
    let generated = |part: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&part.len()) && part.chars().all(|c| ALPHABET.contains(c))
    };
    fn split(name: &str) -> Option<(&str, &str)> {
        name.rsplit_once('-').filter(|(head, _)| !head.is_empty())
    }
    if let Some((head, suffix)) = split(pod) {
        if generated(suffix, 5..=5) {
            if let Some((name, _)) = split(head).filter(|(_, hash)| generated(hash, 6..=10)) {
                return name;
            }
            return head;
        }
        if !suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_digit()) {
            return head;
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_one_word() {
        let pod = Identity {
            pod_uid: Some("uid-1".into()),
            container_id: Some("abcdef0123456789".into()),
            cgroup_path: Some("/kubepods/pod-uid-1/abc".into()),
            ..Identity::default()
        };
        assert_eq!(pod.display_name(), "pod:uid-1/abcdef012345");
        let named = Identity {
            namespace: Some("shop".into()),
            pod: Some("api".into()),
            container: Some("app".into()),
            ..pod.clone()
        };
        assert_eq!(named.display_name(), "shop/api/app");
        let short_id = Identity {
            container_id: Some("abc".into()),
            ..pod
        };
        assert_eq!(short_id.display_name(), "pod:uid-1/abc");
        let netns = Identity {
            netns: Some(4026531840),
            ..Identity::default()
        };
        assert_eq!(netns.display_name(), "netns:4026531840");
        assert_eq!(Identity::default().display_name(), "(unattributed)");
        for name in [named.display_name(), netns.display_name()] {
            assert!(!name.contains(char::is_whitespace), "{name}");
        }
    }

    #[test]
    fn workload_names() {
        for (pod, workload) in [
            ("api-7f9c4b6d8-xk2pq", "api"),
            ("api-server-7f9c4b6d8-xk2pq", "api-server"),
            ("node-exporter-zx7vb", "node-exporter"),
            ("web-0", "web"),
            ("web-12", "web"),
            ("api-server", "api-server"),
            ("busybox", "busybox"),
            // Vowels never appear in generated suffixes.
            ("cache-redis", "cache-redis"),
            ("-12", "-12"),
        ] {
            assert_eq!(workload_name(pod), workload, "{pod}");
        }
    }
}
