//! Real pods: a private containerd (Debian's 1.6, CRI plugin, runc, overlayfs, CNI
//! bridge) driven through the CRI gRPC API as the kubelet drives it, with the kubelet's
//! cgroupfs-driver cgroup layout and its pod log directories.
//!
//! Each [`Cri`] has its own root, state, socket, runc root, CNI configuration, IPAM
//! store, bridge and cgroup prefix, all named uniquely, so test binaries and tests run
//! in parallel and never touch a containerd they did not start. Everything is removed on
//! drop, failure included: pods through CRI first, then whatever is left by hand
//! (processes, mounts, network namespaces, cgroups, the bridge, the directories).
//!
//! No registry is reachable: the one image ([`IMAGE`], also the sandbox "pause" image)
//! is built here from scratch as an OCI archive (static busybox, the tests' `testload`
//! with its shared libraries) and imported with `ctr`.

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, Device,
    ImageSpec, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest, image_service_client::ImageServiceClient,
    runtime_service_client::RuntimeServiceClient,
};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;

use crate::{random_hex, unique};

/// The one test image: static busybox (`/bin/sh`, `/bin/sleep`, ...) and
/// `/bin/testload`. Its default command sleeps, so it is the pods' sandbox image too.
pub const IMAGE: &str = "docker.io/tuneprobe-test/busybox:1";

/// Bound of every CRI call (a sandbox with CNI setup takes about a second here).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd may take to answer `Version` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The pod's QoS class: where the kubelet puts its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What [`Cri`] removes by hand once containerd is gone; also cleans up after a
/// [`Cri::start`] that failed half-way.
struct Leftovers {
    dir: PathBuf,
    socket: PathBuf,
    /// `/tuneprobe-cri-…`: the kubelet hierarchy of this fixture sits below it.
    cgroup_prefix: String,
    bridge: String,
    containerd: Option<Child>,
    /// The pods' network namespaces (bind mounts under /var/run/netns).
    netns: Mutex<Vec<PathBuf>>,
}

/// A private containerd with the CRI plugin, answering on [`socket`](Self::socket).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// The kubelet's `/var/log/pods` of this fixture.
    logs: PathBuf,
    /// Declared last: dropped after [`Cri::drop`] has removed the pods through CRI.
    leftovers: Leftovers,
}

impl Cri {
    /// Starts containerd, waits until CRI answers `Version`, and imports [`IMAGE`].
    pub fn start() -> Self {
        let id = random_hex(8);
        let dir = PathBuf::from(format!("/run/tuneprobe-cri-{id}"));
        let mut leftovers = Leftovers {
            socket: dir.join("containerd.sock"),
            dir: dir.clone(),
            cgroup_prefix: format!("/tuneprobe-cri-{id}"),
            // Interface names hold at most 15 characters.
            bridge: format!("tpcri{id}"),
            containerd: None,
            netns: Mutex::new(Vec::new()),
        };
        let logs = dir.join("logs/pods");
        for sub in ["root", "state", "opt", "runc", "cni/conf", "cni/ipam"] {
            fs::create_dir_all(dir.join(sub)).expect("create fixture directories");
        }
        fs::create_dir_all(&logs).expect("create the pod log directory");
        fs::create_dir_all(dir.join("logs/containers")).expect("create container log links");
        fs::write(
            dir.join("cni/conf/10-tuneprobe.conflist"),
            cni_config(&dir, &leftovers.bridge),
        )
        .expect("write the CNI config");
        fs::write(dir.join("config.toml"), containerd_config(&dir)).expect("write the config");
        // The bridge plugin takes an existing bridge as it is: made here without IPv6, it
        // sends no router solicitations or MLD reports to the pods.
        crate::sh(&["ip", "link", "add", &leftovers.bridge, "type", "bridge"]);
        disable_ipv6(&leftovers.bridge);
        crate::sh(&["ip", "link", "set", &leftovers.bridge, "up"]);
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd log");
        leftovers.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(dir.join("config.toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start containerd: {e}")),
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // The agent's own CRI channel (`--cri-socket`): the fixture dials as it does.
        let channel = rt.block_on(async {
            tuneprobe::workloads::cri::unix_channel(&leftovers.socket, CALL_TIMEOUT)
        });
        let cri = Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            logs,
            leftovers,
        };
        cri.wait_for_version();
        cri.import_image(&cri.build_test_image());
        cri
    }

    /// The containerd socket: what the kubelet's `--container-runtime-endpoint` names.
    pub fn socket(&self) -> &Path {
        &self.leftovers.socket
    }

    /// The kubelet's `/var/log/pods` of this fixture (its sibling `containers` holds the
    /// container log links).
    pub fn pod_logs_dir(&self) -> &Path {
        &self.logs
    }

    /// The fixture's private directory (root, state, sockets, logs, CNI config).
    pub fn dir(&self) -> &Path {
        &self.leftovers.dir
    }

    /// `/tuneprobe-cri-…`: every pod cgroup of this fixture is below it, in every
    /// hierarchy.
    pub fn cgroup_prefix(&self) -> &str {
        &self.leftovers.cgroup_prefix
    }

    /// The CNI bridge on the host (no address of its own).
    pub fn bridge(&self) -> &str {
        &self.leftovers.bridge
    }

    /// containerd's own log so far, for failure messages.
    pub fn containerd_log(&self) -> String {
        fs::read_to_string(self.leftovers.dir.join("containerd.log")).unwrap_or_default()
    }

    fn wait_for_version(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let answer = self
                .rt
                .block_on(self.runtime.clone().version(VersionRequest::default()));
            match answer {
                Ok(version) => {
                    let version = version.into_inner();
                    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!(
                    "containerd did not answer CRI Version within {START_TIMEOUT:?}: {e}\n{}",
                    self.containerd_log()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Imports an image archive holding [`IMAGE`] into the `k8s.io` namespace, where CRI
    /// finds images.
    pub fn import_image(&self, archive: &Path) {
        self.import_image_named(archive, IMAGE);
    }

    /// Imports an image archive into the `k8s.io` namespace and waits until CRI lists
    /// `image` (a fully qualified reference, `docker.io/library/NAME:TAG`): an archive
    /// that does not carry that name fails here, not at CreateContainer.
    pub fn import_image_named(&self, archive: &Path, image: &str) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr images import {}: {}{}",
            archive.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // CRI learns of the image from containerd's events: wait until it lists it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.rt.block_on(self.images.clone().image_status(
                k8s_cri::v1::ImageStatusRequest {
                    image: Some(image_spec(image)),
                    verbose: false,
                },
            ));
            if status.is_ok_and(|s| s.into_inner().image.is_some()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI never saw {image} after importing {}",
                archive.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Builds [`IMAGE`] as an OCI archive in the fixture's directory.
    fn build_test_image(&self) -> PathBuf {
        let mut files = vec![("/bin/busybox".to_string(), PathBuf::from("/bin/busybox"))];
        let testload = crate::testload();
        files.push(("/bin/testload".to_string(), testload.clone()));
        // The test binaries are linked against the host's glibc: ship its libraries at
        // the same paths, and the dynamic loader finds them as it does on the host.
        for library in shared_libraries(&testload) {
            files.push((library.display().to_string(), library));
        }
        let links: Vec<(String, String)> = ["sh", "sleep", "cat", "nc", "ls", "touch"]
            .iter()
            .map(|applet| (format!("/bin/{applet}"), "busybox".to_string()))
            .collect();
        let archive = self.leftovers.dir.join("image.tar");
        // A long sleep: the sandbox ("pause") container must outlive every test.
        write_oci_archive(&archive, IMAGE, &files, &links, &["/bin/sleep", "86400"]);
        archive
    }

    /// Runs a pod sandbox as the kubelet does (metadata, labels, log directory, cgroup
    /// parent of the cgroupfs driver, its own network namespace from CNI).
    pub fn run_pod(&self, namespace: &str, name: &str, uid: &str, qos: Qos) -> Pod<'_> {
        let options = PodOptions {
            labels: HashMap::from([("app.kubernetes.io/name".to_string(), name.to_string())]),
            ..PodOptions::default()
        };
        self.run_pod_with(namespace, name, uid, qos, &options)
    }

    /// [`run_pod`](Self::run_pod) with the pod spec's own labels, annotations and
    /// `hostPID`.
    pub fn run_pod_with(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        qos: Qos,
        options: &PodOptions,
    ) -> Pod<'_> {
        let log_directory = self.logs.join(format!("{namespace}_{name}_{uid}"));
        // The kubelet creates the pod's log directory before RunPodSandbox.
        fs::create_dir_all(&log_directory).expect("create the pod log directory");
        let qos_dir = match qos {
            Qos::Guaranteed => "",
            Qos::Burstable => "burstable/",
            Qos::BestEffort => "besteffort/",
        };
        let cgroup_parent = format!(
            "{}/kubepods/{qos_dir}pod{uid}",
            self.leftovers.cgroup_prefix
        );
        // The kubelet copies the pod's own labels onto its sandbox, then adds its own.
        let mut labels = options.labels.clone();
        labels.extend([
            ("io.kubernetes.pod.name".to_string(), name.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                namespace.to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        ]);
        let namespace_options = NamespaceOption {
            network: NamespaceMode::Pod as i32,
            pid: pid_mode(options.host_pid) as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.to_string(),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_directory.display().to_string(),
            labels,
            annotations: options.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    // The kubelet's defaults: the pod's own network and IPC namespaces,
                    // a PID namespace per container (the node's with hostPID).
                    namespace_options: Some(namespace_options),
                    ..Default::default()
                }),
                // No IPv6 on the pod's interface: no router solicitations or MLD reports
                // on the bridge, only the tests' own packets.
                sysctls: HashMap::from([
                    (
                        "net.ipv6.conf.all.disable_ipv6".to_string(),
                        "1".to_string(),
                    ),
                    (
                        "net.ipv6.conf.default.disable_ipv6".to_string(),
                        "1".to_string(),
                    ),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .call(
                "RunPodSandbox",
                self.runtime.clone().run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                }),
            )
            .pod_sandbox_id;
        // The host ends of the pods' veth pairs (bridge ports) came up with IPv6 and
        // would keep soliciting routers into the pods: only the tests' packets should
        // reach them. Switched off at once, before their first delayed solicitation.
        let ports = Path::new("/sys/class/net")
            .join(&self.leftovers.bridge)
            .join("brif");
        for port in fs::read_dir(ports).into_iter().flatten().flatten() {
            disable_ipv6(&port.file_name().to_string_lossy());
        }
        let mut pod = Pod {
            cri: self,
            id,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            cgroup_parent,
            log_directory,
            config,
            ip: String::new(),
            netns: PathBuf::new(),
            host_pid: options.host_pid,
            removed: false,
        };
        let status = self.call(
            "PodSandboxStatus",
            self.runtime
                .clone()
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.id.clone(),
                    verbose: true,
                }),
        );
        pod.ip = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        assert!(
            !pod.ip.is_empty(),
            "CNI gave the pod no address: {status:?}"
        );
        let info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        pod.netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|namespaces| {
                namespaces
                    .iter()
                    .find(|n| n["type"] == "network")
                    .and_then(|n| n["path"].as_str())
            })
            .map_or_else(
                || panic!("no network namespace path in {info}"),
                PathBuf::from,
            );
        self.leftovers.netns.lock().unwrap().push(pod.netns.clone());
        pod
    }

    /// Blocks on one CRI call, panicking with containerd's log if it fails.
    fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> T {
        match self.rt.block_on(call) {
            Ok(response) => response.into_inner(),
            Err(status) => panic!("CRI {what}: {status}\n{}", self.containerd_log()),
        }
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // As the kubelet deletes pods: stop, then remove (which removes the containers).
        let sandboxes = self
            .rt
            .block_on(
                self.runtime
                    .clone()
                    .list_pod_sandbox(ListPodSandboxRequest::default()),
            )
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for sandbox in sandboxes {
            let id = sandbox.id;
            let _ = self.rt.block_on(self.runtime.clone().stop_pod_sandbox(
                StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                },
            ));
            let _ = self.rt.block_on(
                self.runtime
                    .clone()
                    .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }),
            );
        }
        // `leftovers` is dropped next: containerd, then whatever CRI left behind.
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(mut containerd) = self.containerd.take() {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(containerd.id() as i32, libc::SIGTERM) };
            while containerd.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = containerd.kill();
            let _ = containerd.wait();
        }
        // Shims outlive containerd; ours name its socket on their command line. Then
        // any container process still in our cgroups.
        let socket = self.socket.display().to_string();
        for pid in pids_with_argument(&socket) {
            // SAFETY: plain syscall; the pid runs a shim of this fixture.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let cgroup_roots: Vec<PathBuf> = cgroup_mounts()
            .into_iter()
            .map(|m| m.join(self.cgroup_prefix.trim_start_matches('/')))
            .filter(|d| d.exists())
            .collect();
        for root in &cgroup_roots {
            kill_cgroup_tree(root, deadline);
        }
        // Mounts: container root filesystems, sandbox /dev/shm, network namespaces.
        let netns = self.netns.lock().map(|n| n.clone()).unwrap_or_default();
        let dir = self.dir.display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| {
                m.starts_with(&format!("{dir}/")) || netns.iter().any(|n| Path::new(m) == n)
            })
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount) {
                // SAFETY: plain syscall with a valid C string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for ns in &netns {
            let _ = fs::remove_file(ns);
        }
        for root in &cgroup_roots {
            remove_cgroup_tree(root, deadline);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running pod sandbox. Stopped and removed by [`stop_and_remove`](Self::stop_and_remove)
/// or on drop.
pub struct Pod<'a> {
    cri: &'a Cri,
    /// The sandbox id.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `/tuneprobe-cri-…/kubepods/burstable/pod<uid>`, the same in every hierarchy.
    pub cgroup_parent: String,
    pub log_directory: PathBuf,
    config: PodSandboxConfig,
    /// The pod's address on the fixture's bridge.
    pub ip: String,
    /// The pod's network namespace (`/var/run/netns/cni-…`).
    pub netns: PathBuf,
    /// `hostPID`: its containers join the node's PID namespace too.
    host_pid: bool,
    removed: bool,
}

/// What a pod spec sets on its sandbox beyond names and QoS.
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// The pod's own labels (`metadata.labels`).
    pub labels: HashMap<String, String>,
    /// The pod's annotations (`metadata.annotations`).
    pub annotations: HashMap<String, String>,
    /// `hostPID: true`: the sandbox and its containers in the node's PID namespace.
    pub host_pid: bool,
}

/// One container as the kubelet hands it to CRI, for [`Pod::create_container_with`].
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    /// A fully qualified image reference that the runtime has (see
    /// [`Cri::import_image_named`]).
    pub image: String,
    /// Replaces the image's entrypoint when not empty (`command:` of the pod spec).
    pub command: Vec<String>,
    /// Replaces the image's default command (`args:` of the pod spec).
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub resources: LinuxContainerResources,
    /// Capabilities, user, read-only root, no_new_privs, seccomp... Its namespace
    /// options are the pod's (as the kubelet sets them), whatever is given here.
    pub security_context: LinuxContainerSecurityContext,
}

/// One started container of a [`Pod`].
#[derive(Debug, Clone)]
pub struct PodContainer {
    pub id: String,
    pub name: String,
    /// The container's first process, as the host sees it.
    pub pid: u32,
    /// The container's cgroup, relative to each hierarchy's mount.
    pub cgroup_path: String,
    /// Where CRI writes its output (`<log dir>/<name>/0.log`).
    pub log_path: PathBuf,
}

impl PodContainer {
    /// The container's directory in the cpu hierarchy (runc uses the same path in all).
    pub fn cpu_dir(&self) -> PathBuf {
        let mount = tuneprobe::workloads::cgroup::Hierarchies::of_this_node()
            .cpu
            .expect("a cpu hierarchy");
        mount.join(self.cgroup_path.trim_start_matches('/'))
    }

    /// Waits (up to `timeout`) until a load that ends in `exec sleep` is done: the
    /// container's only process is that sleep.
    pub fn wait_for_sleep(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let procs = fs::read_to_string(self.cpu_dir().join("cgroup.procs")).unwrap();
            let pids: Vec<&str> = procs.lines().collect();
            if let [pid] = pids.as_slice()
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still busy: {procs}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Pod<'_> {
    /// Creates and starts a container running `argv` in [`IMAGE`], with `resources`
    /// (quota, shares, ...) as the kubelet derives them from the pod spec.
    pub fn create_container(
        &self,
        name: &str,
        argv: &[&str],
        resources: LinuxContainerResources,
    ) -> PodContainer {
        self.create_container_with(ContainerSpec {
            name: name.to_string(),
            image: IMAGE.to_string(),
            command: argv.iter().map(std::string::ToString::to_string).collect(),
            resources,
            ..ContainerSpec::default()
        })
    }

    /// [`create_container`](Self::create_container) with host block or character
    /// devices (a pod spec's `volumeDevices`, or a device plugin's allocation): each at
    /// the same path inside the container, readable, writable and creatable (`rwm`), in
    /// the container's device cgroup allow list.
    pub fn create_container_with_devices(
        &self,
        name: &str,
        argv: &[&str],
        resources: LinuxContainerResources,
        devices: &[&str],
    ) -> PodContainer {
        let spec = ContainerSpec {
            name: name.to_string(),
            image: IMAGE.to_string(),
            command: argv.iter().map(std::string::ToString::to_string).collect(),
            resources,
            ..ContainerSpec::default()
        };
        let devices = devices
            .iter()
            .map(|path| Device {
                container_path: path.to_string(),
                host_path: path.to_string(),
                permissions: "rwm".to_string(),
            })
            .collect();
        self.create(spec, devices)
    }

    /// Creates and starts a container as the kubelet does from a full container spec.
    pub fn create_container_with(&self, spec: ContainerSpec) -> PodContainer {
        self.create(spec, Vec::new())
    }

    fn create(&self, spec: ContainerSpec, devices: Vec<Device>) -> PodContainer {
        let name = spec.name.as_str();
        // The kubelet creates `<pod log dir>/<container>/` and names the file by restart
        // count.
        fs::create_dir_all(self.log_directory.join(name)).expect("container log directory");
        let log_path = format!("{name}/0.log");
        let labels = HashMap::from([
            ("io.kubernetes.container.name".to_string(), name.to_string()),
            ("io.kubernetes.pod.name".to_string(), self.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                self.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".to_string(), self.uid.clone()),
        ]);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(image_spec(&spec.image)),
            command: spec.command,
            args: spec.args,
            envs: spec
                .envs
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect(),
            mounts: spec.mounts,
            devices,
            labels,
            log_path: log_path.clone(),
            linux: Some(LinuxContainerConfig {
                resources: Some(spec.resources),
                security_context: Some(LinuxContainerSecurityContext {
                    // The kubelet gives every container the pod's namespaces.
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: pid_mode(self.host_pid) as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..spec.security_context
                }),
            }),
            ..Default::default()
        };
        let id = self
            .cri
            .call(
                "CreateContainer",
                self.cri
                    .runtime
                    .clone()
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: self.id.clone(),
                        config: Some(config),
                        sandbox_config: Some(self.config.clone()),
                    }),
            )
            .container_id;
        self.cri.call(
            "StartContainer",
            self.cri
                .runtime
                .clone()
                .start_container(StartContainerRequest {
                    container_id: id.clone(),
                }),
        );
        // The kubelet's link that names the container by id:
        // `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`.
        let log_file = self.log_directory.join(&log_path);
        let link = self
            .cri
            .logs
            .with_file_name("containers")
            .join(format!("{}_{}_{name}-{id}.log", self.name, self.namespace));
        symlink(&log_file, &link).expect("container log link");
        let (pid, cgroup_path) = self.container_pid_and_cgroup(&id);
        PodContainer {
            cgroup_path,
            id,
            name: name.to_string(),
            pid,
            log_path: log_file,
        }
    }

    /// The pid and cgroup of a started container, from CRI's verbose status (which keeps
    /// both after a short-lived container has exited).
    fn container_pid_and_cgroup(&self, id: &str) -> (u32, String) {
        let status = self.cri.call(
            "ContainerStatus",
            self.cri
                .runtime
                .clone()
                .container_status(ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: true,
                }),
        );
        let info: serde_json::Value = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let pid = info["pid"]
            .as_u64()
            .filter(|&pid| pid > 0)
            .unwrap_or_else(|| panic!("no pid for container {id}: {info}"))
            as u32;
        // With the cgroupfs driver runc takes this as the path in every hierarchy.
        let cgroup = info["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_else(|| panic!("no cgroupsPath for container {id}: {info}"))
            .to_string();
        (pid, cgroup)
    }

    /// The container's exit code once it has exited; `None` while it runs.
    pub fn exit_code(&self, container: &PodContainer) -> Option<i32> {
        let status = self
            .cri
            .call(
                "ContainerStatus",
                self.cri
                    .runtime
                    .clone()
                    .container_status(ContainerStatusRequest {
                        container_id: container.id.clone(),
                        verbose: false,
                    }),
            )
            .status
            .expect("a container status");
        (status.state == k8s_cri::v1::ContainerState::ContainerExited as i32)
            .then_some(status.exit_code)
    }

    /// Waits until the container has exited; returns its exit code.
    pub fn wait_exit(&self, container: &PodContainer, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code(container) {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "container {} did not exit within {timeout:?}",
                container.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a host command in the pod's network namespace (`nsenter --net=`; mounts,
    /// `/sys` and cgroups stay the host's) and returns its stdout; panics if it fails.
    pub fn netns_exec(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"));
        assert!(
            out.status.success(),
            "nsenter --net={} {args:?}: {}{}",
            self.netns.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops and removes one container (SIGKILL at once: a timeout of 0).
    pub fn remove_container(&self, container: &PodContainer) {
        self.cri.call(
            "StopContainer",
            self.cri
                .runtime
                .clone()
                .stop_container(StopContainerRequest {
                    container_id: container.id.clone(),
                    timeout: 0,
                }),
        );
        self.cri.call(
            "RemoveContainer",
            self.cri
                .runtime
                .clone()
                .remove_container(RemoveContainerRequest {
                    container_id: container.id.clone(),
                }),
        );
    }

    /// Deletes the pod as the kubelet does: StopPodSandbox, RemovePodSandbox (which
    /// removes its containers), then its log directory and container log links.
    pub fn stop_and_remove(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        self.cri.call(
            "StopPodSandbox",
            self.cri
                .runtime
                .clone()
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: self.id.clone(),
                }),
        );
        self.cri.call(
            "RemovePodSandbox",
            self.cri
                .runtime
                .clone()
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: self.id.clone(),
                }),
        );
        // runc removes the containers' cgroups; the pod's own is the kubelet's to remove.
        let deadline = Instant::now() + Duration::from_secs(5);
        for mount in cgroup_mounts() {
            let dir = mount.join(self.cgroup_parent.trim_start_matches('/'));
            while fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.log_directory);
        let prefix = format!("{}_{}_", self.name, self.namespace);
        let links = self.cri.logs.with_file_name("containers");
        for entry in fs::read_dir(&links).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if !self.removed && !std::thread::panicking() {
            self.remove();
        }
        // When a test panics, Cri's drop removes every sandbox (a second panic here would
        // abort the test binary).
    }
}

/// A fresh kubelet-style pod UID (a UUID).
pub fn pod_uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a random UUID")
        .trim()
        .to_string()
}

/// A name unique to this call that is also a DNS label (pod and namespace names).
pub fn dns_name(prefix: &str) -> String {
    unique(prefix).to_ascii_lowercase()
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// The PID namespace of a pod's sandbox and containers: the node's with `hostPID`.
fn pid_mode(host_pid: bool) -> NamespaceMode {
    if host_pid {
        NamespaceMode::Node
    } else {
        NamespaceMode::Container
    }
}

/// Switches IPv6 off on one interface of the host (ours: a per-interface knob).
fn disable_ipv6(interface: &str) {
    let knob = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    if Path::new(&knob).exists() {
        fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
    }
}

/// Mount points of every cgroup hierarchy (v1 and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mount = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// Every directory below `root`, `root` included, deepest first.
fn cgroup_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(dir);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

fn kill_cgroup_tree(root: &Path, deadline: Instant) {
    // Again until nothing is left: a process may fork while we kill.
    loop {
        let pids: Vec<i32> = cgroup_dirs(root)
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|p| p.lines().filter_map(|l| l.parse().ok()).collect::<Vec<_>>())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: plain syscall; the pid is in this fixture's cgroups.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_cgroup_tree(root: &Path, deadline: Instant) {
    for dir in cgroup_dirs(root) {
        // A killed process leaves its cgroup a moment later.
        while fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Processes whose command line has `argument` as one of its arguments.
fn pids_with_argument(argument: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == argument.as_bytes()))
        })
        .collect()
}

/// The shared libraries `binary` loads, the dynamic loader included (from `ldd`).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x…)`; `linux-vdso.so.1` has no file.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Snapshotters this machine cannot run only log errors; skip them.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Debian's runc has no AppArmor profile for containerd's default to load.
  disable_apparmor = true
  # CRI lowers the sandbox's oom_score_adj to -998, which needs CAP_SYS_RESOURCE (root
  # here lacks it): keep every adjustment at or above containerd's own.
  restrict_oom_score_adj = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # The kubelet's cgroupfs driver: runc takes cgroup_parent/<id> as a path.
  SystemdCgroup = false
  Root = "{d}/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni/conf"
  max_conf_num = 1
"#
    )
}

/// A bridge with host-local addresses from a private /24. The bridge is no gateway and
/// has no address: pods reach each other and nothing else.
fn cni_config(dir: &Path, bridge: &str) -> String {
    let octet = u8::from_str_radix(&random_hex(2), 16).unwrap_or(0);
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": bridge,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.89.{octet}.0/24")}]],
                "dataDir": dir.join("cni/ipam").display().to_string(),
            },
        }],
    })
    .to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Appends a regular file or directory entry with root ownership and a zero mtime.
fn append(builder: &mut tar::Builder<impl std::io::Write>, path: &str, mode: u32, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    let directory = path.ends_with('/');
    header.set_entry_type(if directory {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    builder
        .append_data(&mut header, path, data)
        .unwrap_or_else(|e| panic!("tar {path}: {e}"));
}

/// Writes an OCI image archive (`oci-layout`, `index.json`, `blobs/sha256/…`) holding
/// one single-layer image for linux/amd64 named `name`: `files` are (path in the image,
/// host file), `links` (path, symlink target); `cmd` is the default command.
pub fn write_oci_archive(
    out: &Path,
    name: &str,
    files: &[(String, PathBuf)],
    links: &[(String, String)],
    cmd: &[&str],
) {
    // The layer: every parent directory, then files and links. runc creates the
    // mount points it needs (/proc, /sys, /dev, ...) itself; /tmp is for the tests.
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = vec!["tmp/".to_string()];
    for path in files.iter().map(|f| &f.0).chain(links.iter().map(|l| &l.0)) {
        let mut parent = Path::new(path.trim_start_matches('/')).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(format!("{}/", dir.display()));
            parent = dir.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        append(
            &mut layer,
            dir,
            if dir == "tmp/" { 0o1777 } else { 0o755 },
            &[],
        );
    }
    for (path, source) in files {
        let data = fs::read(source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        let mode = fs::metadata(source).map_or(0o755, |m| m.permissions().mode() & 0o7777);
        append(&mut layer, path.trim_start_matches('/'), mode, &data);
    }
    for (path, target) in links {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        layer
            .append_link(&mut header, path.trim_start_matches('/'), target)
            .unwrap_or_else(|e| panic!("tar link {path}: {e}"));
    }
    let layer = layer.into_inner().expect("layer tar");
    // Uncompressed: the layer's digest is its diff id too.
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .expect("config JSON");
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .expect("manifest JSON");
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            // containerd names the imported image after this annotation.
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("index JSON");

    let file = fs::File::create(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
    append(&mut archive, "blobs/", 0o755, &[]);
    append(&mut archive, "blobs/sha256/", 0o755, &[]);
    append(
        &mut archive,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    append(&mut archive, "index.json", 0o644, &index);
    for (digest, blob) in [
        (&manifest_digest, &manifest),
        (&config_digest, &config),
        (&layer_digest, &layer),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        append(&mut archive, &format!("blobs/sha256/{hex}"), 0o644, blob);
    }
    archive
        .into_inner()
        .and_then(|mut w| w.flush())
        .expect("write the image archive");
}

/// The v2 id (inode) of a cgroup path, or of any directory.
pub fn inode(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}
