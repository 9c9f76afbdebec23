//! What the benchmark builds and must take down again: two network namespaces joined by
//! a veth pair, nft drop rules, dnsmasq and iperf3 servers, a loop device, a throttled
//! cpu cgroup and the cgroups of the scale stage. Everything is removed by `Drop`, which
//! also runs when a stage fails or Ctrl-C ends the run.

use std::{
    fs,
    io::Read as _,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{interrupted, pause};

/// Client side (namespace A) and server side (namespace B); private to the namespaces.
pub const ADDR_A: &str = "10.231.0.1";
pub const ADDR_B: &str = "10.231.0.2";
/// UDP port that namespace B drops on input (NETFILTER_DROP, one per packet).
pub const DROP_PORT: u16 = 9999;
/// UDP port that namespace A drops on output: the drop keeps the sender's socket, so it
/// is counted per sending cgroup (the scale stage).
pub const EGRESS_DROP_PORT: u16 = 9998;
/// iperf3 servers: plain, and one behind 5% random loss (retransmits for the load mix).
pub const IPERF_PORT: u16 = 5201;
pub const IPERF_LOSSY_PORT: u16 = 5202;
pub const DNS_NAME: &str = "bench.local";

/// A child process that is stopped (TERM, then KILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has exited already (and how).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` and waits up to `grace` for the exit, then kills.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child, which is not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits up to `timeout` for the exit and returns what it wrote to its (piped) stdout.
    pub fn wait_output(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let stdout = self.child.as_mut().and_then(|c| c.stdout.take());
        let reader = thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stdout) = stdout {
                let _ = stdout.read_to_string(&mut text);
            }
            text
        });
        let status = self.wait(timeout)?;
        let text = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        ensure!(
            status.success(),
            "{} failed ({status}): {text:.300}",
            self.name
        );
        Ok(text)
    }

    /// Waits for the process to exit by itself, for at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            if interrupted() {
                bail!("interrupted");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM, Duration::from_secs(3));
    }
}

/// Runs a command to completion, returning stdout; fails with stderr on failure.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Lab {
    pub ns_a: String,
    pub ns_b: String,
    dev_a: String,
    /// `/dev/loopN`, once bound.
    pub loop_device: Option<String>,
    backing_file: PathBuf,
    /// v1 cpu cgroup with a 10% quota, for throttle events.
    pub cpu_cgroup: Option<PathBuf>,
    /// cgroup v2 parent of the scale stage's workloads.
    pub scale_parent: Option<PathBuf>,
    /// Servers, stopped before anything they use is removed.
    servers: Vec<Proc>,
    ns_created: Vec<String>,
}

impl Lab {
    pub fn new(id: &str) -> anyhow::Result<Self> {
        let mut lab = Self {
            ns_a: format!("tpbA{id}"),
            ns_b: format!("tpbB{id}"),
            dev_a: format!("tpbva{id}"),
            loop_device: None,
            backing_file: PathBuf::from(format!("/var/tmp/tuneprobe-bench-{id}.img")),
            cpu_cgroup: None,
            scale_parent: None,
            servers: Vec::new(),
            ns_created: Vec::new(),
        };
        let dev_b = format!("tpbvb{id}");
        for ns in [lab.ns_a.clone(), lab.ns_b.clone()] {
            sh(&["ip", "netns", "add", &ns])?;
            lab.ns_created.push(ns);
        }
        sh(&[
            "ip", "link", "add", &lab.dev_a, "netns", &lab.ns_a, "type", "veth", "peer", "name",
            &dev_b, "netns", &lab.ns_b,
        ])?;
        for (ns, dev, addr) in [(&lab.ns_a, &lab.dev_a, ADDR_A), (&lab.ns_b, &dev_b, ADDR_B)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        // Namespace B drops the UDP flood on input; 5% of the lossy iperf3 flow's
        // segments vanish, so TCP retransmits. Namespace A drops the scale stage's
        // packets on output, where the skb still carries the sending socket.
        let nft = |ns: &str, rule: String| -> anyhow::Result<()> {
            let mut args = vec!["ip", "netns", "exec", ns, "nft"];
            args.extend(rule.split(' '));
            sh(&args).map(drop)
        };
        for (ns, hook) in [(&lab.ns_b, "input"), (&lab.ns_a, "output")] {
            nft(ns, "add table inet tpbench".to_string())?;
            nft(
                ns,
                format!("add chain inet tpbench {hook} {{ type filter hook {hook} priority 0 ; }}"),
            )?;
        }
        nft(
            &lab.ns_b,
            format!("add rule inet tpbench input udp dport {DROP_PORT} counter drop"),
        )?;
        nft(
            &lab.ns_b,
            format!(
                "add rule inet tpbench input tcp dport {IPERF_LOSSY_PORT} numgen random mod 20 == 0 drop"
            ),
        )?;
        nft(
            &lab.ns_a,
            format!("add rule inet tpbench output udp dport {EGRESS_DROP_PORT} counter drop"),
        )?;
        wait_link_up(&lab.ns_a, &lab.dev_a)?;
        Ok(lab)
    }

    /// dnsmasq answering `bench.local` and two iperf3 servers, all in namespace B.
    pub fn start_servers(&mut self) -> anyhow::Result<()> {
        let dnsmasq = Proc::spawn(
            "dnsmasq",
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns_b,
                    "dnsmasq",
                    "--keep-in-foreground",
                ])
                .args([
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--user=root",
                    "--pid-file=",
                    "--dns-forward-max=1000",
                    &format!("--listen-address={ADDR_B}"),
                    &format!("--address=/{DNS_NAME}/10.0.0.53"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        self.servers.push(dnsmasq);
        for port in [IPERF_PORT, IPERF_LOSSY_PORT] {
            let iperf = Proc::spawn(
                "iperf3 server",
                Command::new("ip")
                    .args(["netns", "exec", &self.ns_b, "iperf3", "-s", "-B", ADDR_B])
                    .args(["-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            self.servers.push(iperf);
        }
        // Ready when dnsmasq answers and iperf3 listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ns_a = self.ns_a.clone();
        let answered = super::load::in_netns(&ns_a, move || {
            let socket = UdpSocket::bind((ADDR_A, 0))?;
            socket.connect((ADDR_B, 53))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let query = super::load::dns_query(1);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                socket.send(&query)?;
                if socket.recv(&mut buf).is_ok() {
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        ensure!(
            answered,
            "dnsmasq in {} did not answer within 10 s",
            self.ns_b
        );
        for port in [IPERF_PORT, IPERF_LOSSY_PORT] {
            let listening = || -> bool {
                sh(&["ip", "netns", "exec", &self.ns_b, "ss", "-Hltn"])
                    .is_ok_and(|out| out.contains(&format!(":{port} ")))
            };
            while !listening() {
                ensure!(
                    Instant::now() < deadline,
                    "iperf3 on port {port} did not start"
                );
                pause(Duration::from_millis(50))?;
            }
        }
        Ok(())
    }

    /// A loop device with direct IO over a file of `megabytes`.
    pub fn create_loop_device(&mut self, megabytes: usize) -> anyhow::Result<String> {
        fs::write(&self.backing_file, vec![0x5au8; megabytes << 20])
            .with_context(|| format!("writing {}", self.backing_file.display()))?;
        let device = sh(&[
            "losetup",
            "--find",
            "--show",
            "--direct-io=on",
            self.backing_file.to_str().unwrap_or_default(),
        ])?
        .trim()
        .to_string();
        self.loop_device = Some(device.clone());
        Ok(device)
    }

    /// A v1 cpu cgroup limited to 10% of a CPU: a busy loop in it is throttled ~10
    /// times a second.
    pub fn create_cpu_cgroup(&mut self, id: &str) -> anyhow::Result<PathBuf> {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/cpu/tuneprobe-bench-{id}"));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.cpu_cgroup = Some(dir.clone());
        fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
        fs::write(dir.join("cpu.cfs_quota_us"), "10000")?;
        Ok(dir)
    }

    /// The packets that reached namespace B's drop rule so far.
    pub fn dropped_in_b(&self) -> anyhow::Result<u64> {
        let out = sh(&[
            "ip", "netns", "exec", &self.ns_b, "nft", "list", "chain", "inet", "tpbench", "input",
        ])?;
        out.split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no counter in {out}"))
    }

    /// Creates `count` cgroup v2 directories under a fresh parent; returns the parent.
    pub fn create_scale_cgroups(&mut self, id: &str, count: usize) -> anyhow::Result<PathBuf> {
        let parent = PathBuf::from(format!("/sys/fs/cgroup/unified/tuneprobe-bench-{id}"));
        fs::create_dir(&parent).with_context(|| format!("creating {}", parent.display()))?;
        self.scale_parent = Some(parent.clone());
        for i in 0..count {
            if i % 1000 == 0 && interrupted() {
                bail!("interrupted");
            }
            fs::create_dir(parent.join(format!("w{i:05}")))?;
        }
        Ok(parent)
    }

    pub fn remove_scale_cgroups(&mut self) {
        if let Some(parent) = self.scale_parent.take() {
            remove_cgroup_tree(&parent);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut server in self.servers.drain(..) {
            server.stop(libc::SIGTERM, Duration::from_secs(3));
        }
        self.remove_scale_cgroups();
        if let Some(dir) = self.cpu_cgroup.take() {
            remove_cgroup_tree(&dir);
        }
        if let Some(device) = self.loop_device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
        let _ = fs::remove_file(&self.backing_file);
        for ns in self.ns_created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Removes a cgroup and its children, moving any process left in them to the root.
fn remove_cgroup_tree(dir: &Path) {
    let root = dir.parent().map(|p| p.join("cgroup.procs"));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        if let (Some(root), Ok(procs)) = (&root, fs::read_to_string(dir.join("cgroup.procs"))) {
            for pid in procs.lines() {
                let _ = fs::write(root, pid);
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            // A process that just exited may still be counted for a moment.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("xtask bench: could not remove {}", dir.display());
}

fn wait_link_up(ns: &str, dev: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev])?;
        if out.contains("LOWER_UP") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{dev} in {ns} is not up: {out}");
        pause(Duration::from_millis(20))?;
    }
}

/// Reads a whole small file from /proc or /sys.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(text)
}
