//! Test fixtures that build real kernel objects and remove them on drop, failure included:
//! network namespaces joined by a veth pair, kubelet-style cgroups, and workload
//! processes placed in both.
//!
//! Every fixture gets a unique name, so tests run in parallel and never touch what they
//! did not create. The kernel objects come from `tuneprobe-lab` (the lab the benchmark
//! builds too); these fixtures give them the tests' names and addresses, and panic where
//! the lab returns an error.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use tuneprobe::workloads::procfs::parse_netstat;
pub use tuneprobe_lab::unique;
use tuneprobe_lab::{CgroupTree, Leftovers, PairSpec, random_hex};

pub mod cri;
/// Address of side A (the client side) of a [`NetnsPair`].
pub const ADDR_A: &str = "10.200.0.1";
/// Address of side B (the server side).
pub const ADDR_B: &str = "10.200.0.2";

/// The fixtures' errors become panics that name what failed and why.
fn or_panic<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs a command to completion; panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    or_panic(tuneprobe_lab::sh(args))
}

/// Two network namespaces, `a` (10.200.0.1) and `b` (10.200.0.2), joined by a veth
/// pair, IPv6 off and neighbours static so that no packet but the test's own crosses
/// ([`tuneprobe_lab::NetnsPair`], whose fields `a`, `b`, `dev_a` and `dev_b` it shows).
pub struct NetnsPair(tuneprobe_lab::NetnsPair);

impl NetnsPair {
    pub fn new() -> Self {
        let id = unique("");
        Self(or_panic(tuneprobe_lab::NetnsPair::create(&PairSpec {
            ns_a: &format!("tpa{id}"),
            ns_b: &format!("tpb{id}"),
            dev_a: &format!("va{id}"),
            dev_b: &format!("vb{id}"),
            addr_a: ADDR_A,
            addr_b: ADDR_B,
            quiet: true,
        })))
    }

    /// Adds another address to side B (a second resolver, say), reachable from A.
    pub fn add_address_b(&self, addr: &str) {
        or_panic(self.0.add_address_b(addr));
    }

    /// Runs a command inside namespace `ns` and returns its stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        or_panic(self.0.exec(ns, args))
    }

    /// Inode number of a namespace, as the kernel programs report it.
    pub fn inode(ns: &str) -> u32 {
        or_panic(tuneprobe_lab::NetnsPair::inode(ns))
    }

    /// `/proc/net/snmp` (or `netstat`) of a namespace, as `group -> name -> value`.
    pub fn counters(&self, ns: &str, file: &str) -> HashMap<String, HashMap<String, u64>> {
        parse_netstat(&self.exec(ns, &["cat", &format!("/proc/net/{file}")]))
    }

    pub fn counter(&self, ns: &str, file: &str, group: &str, name: &str) -> u64 {
        self.counters(ns, file)
            .get(group)
            .and_then(|g| g.get(name))
            .copied()
            .unwrap_or_else(|| panic!("no {group}:{name} in /proc/net/{file} of {ns}"))
    }
}

impl Default for NetnsPair {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for NetnsPair {
    type Target = tuneprobe_lab::NetnsPair;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A kubelet-style pod cgroup (systemd driver, containerd, Burstable), created with the
/// same path in the cgroup v2 hierarchy and in the v1 hierarchies of the controllers
/// asked for (on a unified node those are the v2 hierarchy itself). Everything lives
/// below a root private to the test. Containers are added with
/// [`container`](Self::container).
pub struct PodCgroup {
    /// The v2 mount first, then the v1 mounts of the requested controllers.
    mounts: Vec<PathBuf>,
    pub uid: String,
    /// The pod's own cgroup path relative to the mounts (`/tuneprobe-test-…/kubepods.slice/…pod….slice`).
    pub pod_path: String,
    /// The test's private root directory in every hierarchy: on drop, what is left
    /// inside is killed and the directories are removed.
    roots: Vec<CgroupTree>,
}

impl PodCgroup {
    /// A pod in the v2 hierarchy only.
    pub fn new() -> Self {
        Self::with_controllers(&[])
    }

    /// A pod in the v2 hierarchy and in the hierarchies of `controllers` (`cpu`,
    /// `cpuacct`, `blkio`).
    pub fn with_controllers(controllers: &[&str]) -> Self {
        let hierarchies = tuneprobe::workloads::cgroup::Hierarchies::of_this_node();
        let unified = hierarchies.unified.clone().expect("cgroup v2 mounted");
        let mut mounts = vec![unified.clone()];
        for controller in controllers {
            let mount = match *controller {
                "cpu" => hierarchies.cpu.clone(),
                "blkio" => hierarchies.blkio.clone(),
                // v1 keeps cpuacct (CPU usage) beside cpu, unless mounted with it; v2
                // has usage in the cpu controller's cpu.stat.
                "cpuacct" => hierarchies.cpu.clone().map(|cpu| {
                    cpu.parent()
                        .map(|p| p.join("cpuacct"))
                        .filter(|d| d.join("cpuacct.usage").exists())
                        .unwrap_or(cpu)
                }),
                other => panic!("unknown controller {other}"),
            }
            .unwrap_or_else(|| panic!("no {controller} hierarchy"));
            if !mounts.contains(&mount) {
                mounts.push(mount);
            }
        }
        let uid = {
            let h = random_hex(32);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        };
        let root = PathBuf::from(unique("tuneprobe-test-"));
        let pod_path = format!(
            "/{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            root.display(),
            uid.replace('-', "_")
        );
        let mut pod = Self {
            mounts,
            uid,
            pod_path,
            roots: Vec::new(),
        };
        for mount in &pod.mounts {
            pod.roots.push(or_panic(CgroupTree::create(
                mount.join(&root),
                Leftovers::Kill,
            )));
            fs::create_dir_all(join(mount, &pod.pod_path)).expect("create pod cgroup");
        }
        // On a unified node the controllers must be enabled down to the containers.
        let on_unified: Vec<&str> = controllers
            .iter()
            .filter(|c| match **c {
                "cpu" => hierarchies.cpu == hierarchies.unified,
                "cpuacct" => false,
                _ => hierarchies.blkio == hierarchies.unified,
            })
            .map(|c| if *c == "blkio" { "io" } else { *c })
            .collect();
        if !on_unified.is_empty() {
            let enable: String = on_unified.iter().map(|c| format!("+{c} ")).collect();
            let mut dir = unified.clone();
            fs::write(dir.join("cgroup.subtree_control"), enable.trim())
                .expect("enable controllers");
            for segment in pod.pod_path.trim_start_matches('/').split('/') {
                dir.push(segment);
                fs::write(dir.join("cgroup.subtree_control"), enable.trim())
                    .expect("enable controllers");
            }
        }
        pod
    }

    /// The pod cgroup's v2 id.
    pub fn pod_id(&self) -> u64 {
        fs::metadata(join(&self.mounts[0], &self.pod_path))
            .unwrap()
            .ino()
    }

    /// Creates a container cgroup in the pod, in every hierarchy of the pod.
    pub fn container(&mut self) -> Container {
        let id = random_hex(64);
        let path = format!("{}/cri-containerd-{id}.scope", self.pod_path);
        let dirs: Vec<PathBuf> = self.mounts.iter().map(|m| join(m, &path)).collect();
        for dir in &dirs {
            fs::create_dir_all(dir).expect("create container cgroup");
        }
        Container {
            cgroup_id: fs::metadata(&dirs[0]).unwrap().ino(),
            container_id: id,
            path,
            dirs,
        }
    }
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

impl Default for PodCgroup {
    fn default() -> Self {
        Self::new()
    }
}

/// One container cgroup of a [`PodCgroup`].
pub struct Container {
    /// The v2 id.
    pub cgroup_id: u64,
    pub container_id: String,
    pub path: String,
    /// The container's directory in each hierarchy, v2 first.
    pub dirs: Vec<PathBuf>,
}

impl Container {
    /// The container's directory in the hierarchy holding `file` (`cpu.stat`,
    /// `blkio.throttle.read_iops_device`, ...).
    pub fn dir_with(&self, file: &str) -> &Path {
        self.dirs
            .iter()
            .find(|d| d.join(file).exists())
            .unwrap_or_else(|| panic!("no {file} in {:?}", self.dirs))
    }

    /// The container's directory with the cpu controller (`cpu.max` on v2,
    /// `cpu.cfs_quota_us` on v1; a v2 directory has a `cpu.stat` without it).
    pub fn cpu_dir(&self) -> &Path {
        self.dirs
            .iter()
            .find(|d| d.join("cpu.max").exists() || d.join("cpu.cfs_quota_us").exists())
            .expect("a cpu controller directory")
    }

    /// The container's id in the hierarchy holding `file`.
    pub fn id_with(&self, file: &str) -> u64 {
        fs::metadata(self.dir_with(file)).unwrap().ino()
    }
}

/// Path of the `testload` helper binary: cargo builds it next to the `deps` directory
/// that holds the integration test executables.
pub fn testload() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("testload");
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// A workload process: runs `testload ARGS` inside namespace `ns` and, if given, the
/// container cgroup. Killed on drop.
pub struct Workload {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    /// `testload ARGS` in namespace `ns`, in the container if given.
    pub fn spawn(ns: &str, container: Option<&Container>, args: &[&str]) -> Self {
        Self::spawn_program(Some(ns), container, &testload(), args)
    }

    /// Any program, in namespace `ns` (or the test's own) and the container's cgroups.
    pub fn spawn_program(
        ns: Option<&str>,
        container: Option<&Container>,
        program: &Path,
        args: &[&str],
    ) -> Self {
        let netns = ns.map(|ns| fs::File::open(format!("/run/netns/{ns}")).expect("open netns"));
        let procs: Vec<fs::File> = container
            .map(|c| {
                c.dirs
                    .iter()
                    .map(|dir| {
                        fs::OpenOptions::new()
                            .write(true)
                            .open(dir.join("cgroup.procs"))
                            .expect("open cgroup.procs")
                    })
                    .collect()
            })
            .unwrap_or_default();
        let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let procs_fds: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for &fd in &procs_fds {
                    // "0" moves the writing process itself, in v1 and v2 alike.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", program.display()));
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        Self { child, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to print a line (servers print `ready` once listening).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read testload output");
        line.trim().to_string()
    }

    /// Waits for the process to exit successfully, within `timeout`; returns the rest
    /// of its stdout.
    pub fn wait(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "testload exited with {status}");
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
                return rest;
            }
            assert!(
                Instant::now() < deadline,
                "testload did not finish within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        tuneprobe_lab::kill_and_reap(&mut self.child);
    }
}

/// An nftables table private to a test inside a namespace of `pair`; the namespace's
/// removal removes it too, but it is deleted explicitly for tests that reuse a namespace.
pub struct NftTable<'a> {
    table: tuneprobe_lab::NftTable,
    /// The table lives in the pair's namespace: it goes first.
    _pair: std::marker::PhantomData<&'a NetnsPair>,
}

impl<'a> NftTable<'a> {
    /// Creates table `inet NAME` with chain `c` on `hook` and the given rule in it.
    pub fn with_rule(_pair: &'a NetnsPair, ns: &str, hook: &str, rule: &str) -> Self {
        let table = or_panic(tuneprobe_lab::NftTable::create(ns, &unique("tp")));
        or_panic(table.add_chain("c", hook));
        or_panic(table.add_rule("c", rule));
        Self {
            table,
            _pair: std::marker::PhantomData,
        }
    }

    /// Packets counted by the rule's `counter`.
    pub fn packets(&self) -> u64 {
        or_panic(self.table.packets())
    }
}

impl std::ops::Deref for NftTable<'_> {
    type Target = tuneprobe_lab::NftTable;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// Runs the release binary with `args`, expects success, and parses its stdout as JSON.
pub fn tuneprobe_json<I, S>(args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(tuneprobe_binary())
        .args(args)
        .output()
        .expect("run tuneprobe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tuneprobe printed JSON")
}

/// The release binary built by `cargo xtask test`.
pub fn tuneprobe_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tuneprobe");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// A loop device with direct IO over a file full of data (holes would be read without
/// any IO reaching the backing disk). Detached and deleted on drop
/// ([`tuneprobe_lab::LoopDevice`], whose `device` and `name()` it shows).
pub struct LoopDevice {
    /// The scheduler to put back: loop devices outlive their binding.
    original_scheduler: Option<String>,
    /// Dropped after the scheduler is put back.
    device: tuneprobe_lab::LoopDevice,
}

impl LoopDevice {
    pub fn new(megabytes: usize) -> Self {
        let file = PathBuf::from("/var/tmp").join(unique("tuneprobe-loop-"));
        Self {
            original_scheduler: None,
            device: or_panic(tuneprobe_lab::LoopDevice::create(file, megabytes)),
        }
    }

    /// Sets the IO scheduler; the drop puts the old one back.
    pub fn set_scheduler(&mut self, scheduler: &str) {
        let file = self.device.scheduler_file();
        let current = fs::read_to_string(&file).unwrap();
        let active = tuneprobe::kernel::devices::active_scheduler(&current).expect("a scheduler");
        self.original_scheduler.get_or_insert(active);
        fs::write(file, scheduler).unwrap();
    }

    /// `MAJ:MIN` of the disk holding the backing file: what a throttle must limit.
    pub fn backing_device(&self) -> String {
        or_panic(self.device.backing_device())
    }
}

impl std::ops::Deref for LoopDevice {
    type Target = tuneprobe_lab::LoopDevice;

    fn deref(&self) -> &Self::Target {
        &self.device
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(scheduler) = &self.original_scheduler {
            let _ = fs::write(self.device.scheduler_file(), scheduler);
        }
    }
}

/// A child process (an agent, a server) killed and reaped on drop, also when a test fails.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        tuneprobe_lab::kill_and_reap(&mut self.0);
    }
}

/// `tuneprobe serve` on 127.0.0.1:`port` without a Kubernetes API or pod logs (cgroup
/// paths name the workloads), plus `extra` flags; its output is discarded.
pub fn spawn_serve(port: u16, extra: &[&str]) -> Running {
    Running(
        Command::new(tuneprobe_binary())
            .args([
                "serve",
                "--kube-api",
                "none",
                "--pod-logs-dir",
                "/nonexistent",
            ])
            .args(extra)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tuneprobe serve"),
    )
}

/// Waits (up to 30 s) until `/metrics` on `port` contains `marker`.
pub fn wait_for_metrics(port: u16, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/metrics").is_some_and(|(_, body)| body.contains(marker)) {
        assert!(
            Instant::now() < deadline,
            "serve never answered with {marker}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain HTTP/1.0 GET on loopback; returns (status, body), `None` without a response.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Steady DNS load with a known latency: a test server in namespace B that answers after
/// 20 ms (SIGUSR1 to it removes the delay), and a client in `client` (namespace A) that
/// asks for `shop.test` over UDP, one query after another, until killed. Returns
/// (server, client).
pub fn dns_with_a_20ms_server(pair: &NetnsPair, client: &Container) -> (Workload, Workload) {
    let resolver = format!("{ADDR_B}:53");
    let mut server = Workload::spawn(&pair.b, None, &["dns-server", &resolver, "20", "0"]);
    assert_eq!(server.read_line(), "ready");
    let queries = Workload::spawn(
        &pair.a,
        Some(client),
        &[
            "dns-query",
            &resolver,
            "shop.test",
            "1000000",
            "udp",
            "1000",
        ],
    );
    (server, queries)
}

/// An agent's kernel maps by name: the maps behind its own file descriptors
/// (`/proc/PID/fdinfo`, then `bpftool map show`).
pub fn agent_maps(pid: u32) -> HashMap<String, u32> {
    let mut maps = HashMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let show: serde_json::Value = serde_json::from_str(&sh(&[
            "bpftool",
            "-j",
            "map",
            "show",
            "id",
            &id.to_string(),
        ]))
        .unwrap();
        if let Some(name) = show["name"].as_str() {
            maps.insert(name.to_string(), id);
        }
    }
    maps
}

/// Every key of the kernel map `id`, as bytes (`bpftool map dump`).
pub fn map_keys(id: u32) -> Vec<Vec<u8>> {
    let dump: serde_json::Value = serde_json::from_str(&sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "id",
        &id.to_string(),
    ]))
    .unwrap();
    dump.as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            entry["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .unwrap()
        })
        .collect()
}

/// `query` percent-encoded for a URL's query string (PromQL in Prometheus's API).
pub fn url_encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The real programs loaded in-process, every one attached (the test fails otherwise),
/// and a collector window over them from now.
pub fn start_collector() -> tuneprobe::Collector {
    let probe = tuneprobe::Probe::load(&tuneprobe::LoadOptions::default())
        .unwrap_or_else(|e| panic!("load: {e:#}"));
    for status in probe.statuses() {
        assert!(
            status.attached,
            "{} did not attach: {:?}",
            status.name, status.error
        );
    }
    tuneprobe::Collector::start(probe).unwrap_or_else(|e| panic!("collector: {e:#}"))
}

/// The window's snapshot.
pub fn finish_collector(collector: tuneprobe::Collector) -> tuneprobe::Snapshot {
    collector
        .finish()
        .unwrap_or_else(|e| panic!("finish: {e:#}"))
}

/// A directory of its own under the temporary directory, removed on drop, also when the
/// test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&dir).expect("create the temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A filesystem on a block device (ext4 without a journal, so that an inode's write is
/// issued by the task that syncs it) mounted `strictatime` at a directory of its own,
/// with a 1 MiB file `data` on it: every read of it writes the access time. Unmounted on
/// drop.
pub struct StrictatimeMount {
    pub dir: PathBuf,
}

impl StrictatimeMount {
    pub fn new(device: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("tuneprobe-mnt-"));
        fs::create_dir_all(&dir).expect("create the mountpoint");
        sh(&["mkfs.ext4", "-q", "-F", "-O", "^has_journal", device]);
        sh(&[
            "mount",
            "-o",
            "strictatime",
            device,
            &dir.display().to_string(),
        ]);
        let mount = Self { dir };
        fs::write(mount.file(), vec![0x5a; 1 << 20]).expect("write the data file");
        sh(&["sync"]);
        mount
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for StrictatimeMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}
