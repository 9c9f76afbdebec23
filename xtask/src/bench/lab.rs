//! What the benchmark builds and must take down again, from `tuneprobe-lab`'s parts:
//! two network namespaces joined by a veth pair, nft drop rules, dnsmasq and iperf3
//! servers, a loop device, a throttled cpu cgroup and the cgroups of the scale stage.
//! Everything is removed by `Drop`, which also runs when a stage fails or Ctrl-C ends
//! the run.

use std::{
    net::UdpSocket,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use tuneprobe_lab::{
    CgroupTree, Leftovers, LoopDevice, NetnsPair, NftTable, PairSpec, Proc, interrupted, pause, sh,
};

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
/// TCP port of the connection-rate load's server (see `load::connect_load`).
pub const CONNECT_PORT: u16 = 5203;
pub const DNS_NAME: &str = "bench.local";

/// Dropped in this order: servers first (see `Drop`), then what they use.
pub struct Lab {
    id: String,
    /// Servers, stopped before anything they use is removed.
    servers: Vec<Proc>,
    /// cgroup v2 parent of the scale stage's workloads.
    scale: Option<CgroupTree>,
    /// v1 cpu cgroup with a 10% quota, for throttle events.
    cpu_cgroup: Option<CgroupTree>,
    loop_device: Option<LoopDevice>,
    /// `tpbench` in B (input: the drop port, the lossy port) and in A (output).
    drops_in_b: NftTable,
    _drops_in_a: NftTable,
    pub net: NetnsPair,
}

impl Lab {
    pub fn new(id: &str) -> anyhow::Result<Self> {
        let net = NetnsPair::create(&PairSpec {
            ns_a: &format!("tpbA{id}"),
            ns_b: &format!("tpbB{id}"),
            dev_a: &format!("tpbva{id}"),
            dev_b: &format!("tpbvb{id}"),
            addr_a: ADDR_A,
            addr_b: ADDR_B,
            quiet: false,
        })?;
        // Namespace B drops the UDP flood on input; 5% of the lossy iperf3 flow's
        // segments vanish, so TCP retransmits. Namespace A drops the scale stage's
        // packets on output, where the skb still carries the sending socket.
        let drops_in_b = NftTable::create(&net.b, "tpbench")?;
        drops_in_b.add_chain("input", "input")?;
        drops_in_b.add_rule("input", &format!("udp dport {DROP_PORT} counter drop"))?;
        drops_in_b.add_rule(
            "input",
            &format!("tcp dport {IPERF_LOSSY_PORT} numgen random mod 20 == 0 drop"),
        )?;
        let drops_in_a = NftTable::create(&net.a, "tpbench")?;
        drops_in_a.add_chain("output", "output")?;
        drops_in_a.add_rule(
            "output",
            &format!("udp dport {EGRESS_DROP_PORT} counter drop"),
        )?;
        Ok(Self {
            id: id.to_string(),
            servers: Vec::new(),
            scale: None,
            cpu_cgroup: None,
            loop_device: None,
            drops_in_b,
            _drops_in_a: drops_in_a,
            net,
        })
    }

    /// dnsmasq answering `bench.local` and two iperf3 servers, all in namespace B.
    pub fn start_servers(&mut self) -> anyhow::Result<()> {
        let dnsmasq = Proc::spawn(
            "dnsmasq",
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.net.b,
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
                    .args(["netns", "exec", &self.net.b, "iperf3", "-s", "-B", ADDR_B])
                    .args(["-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            self.servers.push(iperf);
        }
        // Ready when dnsmasq answers and iperf3 listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        let ns_a = self.net.a.clone();
        let answered = tuneprobe_lab::run_in_netns(&ns_a, move || {
            let socket = UdpSocket::bind((ADDR_A, 0))?;
            socket.connect((ADDR_B, 53))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let query = dns_query(1);
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
            self.net.b
        );
        for port in [IPERF_PORT, IPERF_LOSSY_PORT] {
            let listening = || -> bool {
                sh(&["ip", "netns", "exec", &self.net.b, "ss", "-Hltn"])
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
        let file = PathBuf::from(format!("/var/tmp/tuneprobe-bench-{}.img", self.id));
        let device = self
            .loop_device
            .insert(LoopDevice::create(file, megabytes)?);
        Ok(device.device.clone())
    }

    /// A v1 cpu cgroup limited to 10% of a CPU: a busy loop in it is throttled ~10
    /// times a second.
    pub fn create_cpu_cgroup(&mut self, id: &str) -> anyhow::Result<PathBuf> {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/cpu/tuneprobe-bench-{id}"));
        let cgroup = self
            .cpu_cgroup
            .insert(CgroupTree::create(dir.clone(), Leftovers::MoveToParent)?);
        std::fs::write(cgroup.path().join("cpu.cfs_period_us"), "100000")?;
        std::fs::write(cgroup.path().join("cpu.cfs_quota_us"), "10000")?;
        Ok(dir)
    }

    /// The packets that reached namespace B's drop rule so far.
    pub fn dropped_in_b(&self) -> anyhow::Result<u64> {
        self.drops_in_b.packets()
    }

    /// Creates `count` cgroup v2 directories under a fresh parent; returns the parent.
    pub fn create_scale_cgroups(&mut self, id: &str, count: usize) -> anyhow::Result<PathBuf> {
        let parent = PathBuf::from(format!("/sys/fs/cgroup/unified/tuneprobe-bench-{id}"));
        self.scale = Some(CgroupTree::create(parent.clone(), Leftovers::MoveToParent)?);
        for i in 0..count {
            if i % 1000 == 0 && interrupted() {
                bail!("interrupted");
            }
            std::fs::create_dir(parent.join(format!("w{i:05}")))?;
        }
        Ok(parent)
    }

    pub fn remove_scale_cgroups(&mut self) {
        self.scale = None;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The fields go after this, in their order.
        for mut server in self.servers.drain(..) {
            server.stop(libc::SIGTERM, Duration::from_secs(3));
        }
    }
}

/// A DNS query for `bench.local` (A, IN, recursion desired) with transaction id `txid`.
pub fn dns_query(txid: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&txid.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in DNS_NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
