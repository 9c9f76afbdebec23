//! Two network namespaces joined by a veth pair, and nftables tables inside them.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{interrupted, sh};

/// Moves the calling thread into the named network namespace (`/run/netns/NS`). A
/// network namespace is per thread: the rest of the process stays where it was. Not
/// `ip netns exec`, which mounts a fresh /sys without the cgroup mounts.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    enter_file(&open(ns)?, ns)
}

fn open(ns: &str) -> anyhow::Result<fs::File> {
    let path = format!("/run/netns/{ns}");
    fs::File::open(&path).with_context(|| format!("opening {path}"))
}

fn enter_file(file: &fs::File, ns: &str) -> anyhow::Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "entering {ns}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Starts `f` on a thread inside network namespace `ns`; fails at once when there is no
/// such namespace.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<T>>> {
    let (file, ns) = (open(ns)?, ns.to_string());
    Ok(thread::spawn(move || {
        enter_file(&file, &ns)?;
        f()
    }))
}

/// Runs `f` on a thread inside network namespace `ns` and waits for it.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    spawn_in(ns, f)?
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
}

/// What a [`NetnsPair`] is called and addressed.
#[derive(Clone, Copy, Debug)]
pub struct PairSpec<'a> {
    /// The namespaces (side A: the clients; side B: the servers).
    pub ns_a: &'a str,
    pub ns_b: &'a str,
    /// The veth ends, one in each namespace (at most 15 characters).
    pub dev_a: &'a str,
    pub dev_b: &'a str,
    /// IPv4 addresses in one /24.
    pub addr_a: &'a str,
    pub addr_b: &'a str,
    /// IPv6 off on the veth (no router solicitations, no MLD; loopback keeps `::1`) and
    /// static neighbours (no ARP), so that no packet but the caller's own crosses it.
    pub quiet: bool,
}

/// Two network namespaces joined by a veth pair, up (carrier included) when created;
/// both namespaces, and with them the veth and everything in them, are deleted on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub dev_a: String,
    pub dev_b: String,
    pub addr_a: String,
    pub addr_b: String,
    /// The namespaces that exist, for the drop.
    created: Vec<String>,
}

impl NetnsPair {
    pub fn create(spec: &PairSpec<'_>) -> anyhow::Result<Self> {
        let mut pair = Self {
            a: spec.ns_a.to_string(),
            b: spec.ns_b.to_string(),
            dev_a: spec.dev_a.to_string(),
            dev_b: spec.dev_b.to_string(),
            addr_a: spec.addr_a.to_string(),
            addr_b: spec.addr_b.to_string(),
            created: Vec::new(),
        };
        // From here on a failing step returns and the drop removes what exists.
        for ns in [spec.ns_a, spec.ns_b] {
            sh(&["ip", "netns", "add", ns])?;
            pair.created.push(ns.to_string());
        }
        sh(&[
            "ip", "link", "add", spec.dev_a, "netns", spec.ns_a, "type", "veth", "peer", "name",
            spec.dev_b, "netns", spec.ns_b,
        ])?;
        for (ns, dev, addr) in [
            (spec.ns_a, spec.dev_a, spec.addr_a),
            (spec.ns_b, spec.dev_b, spec.addr_b),
        ] {
            if spec.quiet {
                let disable = format!("echo 1 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
                pair.exec(ns, &["sh", "-c", &disable])?;
            }
            let cidr = format!("{addr}/24");
            sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        if spec.quiet {
            let mac_b = Self::mac(spec.ns_b, spec.dev_b)?;
            Self::static_neighbour(spec.ns_a, spec.dev_a, spec.addr_b, &mac_b)?;
            let mac_a = Self::mac(spec.ns_a, spec.dev_a)?;
            Self::static_neighbour(spec.ns_b, spec.dev_b, spec.addr_a, &mac_a)?;
        }
        wait_link_up(spec.ns_a, spec.dev_a)?;
        Ok(pair)
    }

    fn mac(ns: &str, dev: &str) -> anyhow::Result<String> {
        let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev])?;
        out.split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string)
            .with_context(|| format!("no MAC in {out}"))
    }

    fn static_neighbour(ns: &str, dev: &str, addr: &str, mac: &str) -> anyhow::Result<()> {
        sh(&[
            "ip",
            "-n",
            ns,
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Adds another address to side B (a second resolver, say), reachable from A through
    /// a static neighbour entry.
    pub fn add_address_b(&self, addr: &str) -> anyhow::Result<()> {
        let cidr = format!("{addr}/24");
        sh(&[
            "ip",
            "-n",
            &self.b,
            "addr",
            "add",
            &cidr,
            "dev",
            &self.dev_b,
        ])?;
        let mac_b = Self::mac(&self.b, &self.dev_b)?;
        Self::static_neighbour(&self.a, &self.dev_a, addr, &mac_b)
    }

    /// Runs a command inside namespace `ns` and returns its stdout.
    pub fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Inode number of a namespace, as the kernel programs report it.
    pub fn inode(ns: &str) -> anyhow::Result<u32> {
        let meta =
            fs::metadata(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
        Ok(meta.ino() as u32)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth end, and the peer with it.
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Waits (up to 5 s) until `dev` in `ns` has a carrier: both veth ends are up.
fn wait_link_up(ns: &str, dev: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev])?;
        if out.contains("LOWER_UP") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{dev} in {ns} is not up: {out}");
        if interrupted() {
            bail!("interrupted");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// An nftables table `inet NAME` in a namespace, deleted on drop (the namespace's
/// deletion would remove it too; the drop matters where a namespace is reused).
pub struct NftTable {
    ns: String,
    pub name: String,
}

impl NftTable {
    pub fn create(ns: &str, name: &str) -> anyhow::Result<Self> {
        sh(&[
            "ip", "netns", "exec", ns, "nft", "add", "table", "inet", name,
        ])?;
        Ok(Self {
            ns: ns.to_string(),
            name: name.to_string(),
        })
    }

    fn nft(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.ns, "nft"];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Adds a filter chain on `hook` (`input`, `output`, ...) that accepts by default.
    pub fn add_chain(&self, chain: &str, hook: &str) -> anyhow::Result<()> {
        let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
        self.nft(&["add", "chain", "inet", &self.name, chain, &spec])
            .map(drop)
    }

    /// Appends `rule` (`udp dport 9999 counter drop`) to `chain`.
    pub fn add_rule(&self, chain: &str, rule: &str) -> anyhow::Result<()> {
        self.nft(&["add", "rule", "inet", &self.name, chain, rule])
            .map(drop)
    }

    /// Packets counted by the table's first `counter`.
    pub fn packets(&self) -> anyhow::Result<u64> {
        let out = self.nft(&["list", "table", "inet", &self.name])?;
        out.split("counter packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no counter in {out}"))
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "inet", &self.name,
            ])
            .status();
    }
}
