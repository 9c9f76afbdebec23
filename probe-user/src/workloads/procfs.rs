//! What `/proc` says about processes (their cgroup v2 path and network namespace) and
//! about each network namespace's TCP counters.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _, path::Path};

/// One process: where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Inode of `/proc/PID/ns/net`.
    pub netns: u32,
    /// Its cgroup v2 path in the node's hierarchy (`0::/path` in `/proc/PID/cgroup`,
    /// resolved against our cgroup namespace); `/` on a v1-only process.
    pub cgroup: String,
}

/// Every process still readable (processes exit while we scan: skipped, not an error),
/// with its cgroup as a path of the node's hierarchy.
pub fn processes(proc_root: &Path) -> Vec<Process> {
    let namespace_root = crate::workloads::cgroup::namespace_root();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = entry.path();
            let netns = fs::metadata(dir.join("ns/net")).ok()?.ino() as u32;
            let cgroup = fs::read_to_string(dir.join("cgroup")).ok()?;
            Some(Process {
                pid,
                netns,
                // The kernel writes it relative to our cgroup namespace.
                cgroup: crate::workloads::cgroup::node_path(
                    namespace_root,
                    &crate::workloads::cgroup::cgroup_v2_path(&cgroup)?,
                ),
            })
        })
        .collect()
}

/// The counters of one network namespace that tuning verdicts need, from the kernel's
/// own MIBs: listen-queue overflows and TCP receive-queue drops (`TcpExt` in
/// `/proc/net/netstat`), and the loads they are normalised by: passive opens, sent and
/// received segments (`Tcp`), received and forwarded packets (`Ip`, `Ip6`) and datagrams
/// that reached a UDP socket (`Udp`, `Udp6`, in `/proc/net/snmp` and `snmp6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetnsCounters {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub passive_opens: u64,
    /// `OutSegs`: segments sent, retransmissions excluded.
    pub sent_segments: u64,
    /// Sockets in TIME_WAIT now (`tw` in `/proc/net/sockstat`, IPv4 and IPv6): a gauge.
    pub time_wait: u64,
    /// `InSegs`: segments received.
    pub received_segments: u64,
    /// Segments dropped for want of receive buffer: `TCPRcvQDrop` (the queue was full
    /// after pruning), `TCPOFODrop` (out-of-order queue) and `RcvPruned` (pruned from
    /// the receive queue).
    pub rcvq_drops: u64,
    /// `PruneCalled`: receive queues collapsed or pruned because the socket's buffer
    /// overran, the step before a drop.
    pub rcvq_prunes: u64,
    /// `InReceives` of IPv4 and IPv6: packets the namespace received, after the
    /// per-CPU backlog.
    pub received_packets: u64,
    /// `ForwDatagrams` and `Ip6OutForwDatagrams`: packets forwarded.
    pub forwarded_packets: u64,
    /// `InDatagrams` + `RcvbufErrors` of UDP and UDP6: datagrams that reached a socket,
    /// delivered or dropped because its receive buffer was full.
    pub received_datagrams: u64,
    /// New connections that found the namespace's conntrack table full
    /// (`/proc/net/stat/nf_conntrack`, every CPU's `early_drop` + `drop`): an older
    /// unconfirmed entry evicted to make room, or, with none to evict, the packet
    /// dropped. 0 where conntrack is not loaded.
    pub conntrack_full: u64,
}

impl NetnsCounters {
    /// Reads the namespace of `pid` through `/proc/PID/net/{netstat,snmp,snmp6,sockstat}`.
    pub fn of_pid(proc_root: &Path, pid: u32) -> Option<Self> {
        let net = proc_root.join(pid.to_string()).join("net");
        let read = |name: &str| fs::read_to_string(net.join(name)).ok();
        let mut netstat = parse_netstat(&read("netstat")?);
        let tcp_ext = netstat.remove("TcpExt")?;
        let mut snmp = parse_netstat(&read("snmp")?);
        let tcp = snmp.remove("Tcp")?;
        let (ip, udp) = (snmp.remove("Ip").unwrap_or_default(), snmp.remove("Udp"));
        // IPv6 may be disabled: no snmp6, no IPv6 counts.
        let snmp6 = read("snmp6").map(|t| parse_snmp6(&t)).unwrap_or_default();
        let ext = |name: &str| tcp_ext.get(name).copied().unwrap_or(0);
        let get = |group: &HashMap<String, u64>, name: &str| group.get(name).copied().unwrap_or(0);
        let v6 = |name: &str| get(&snmp6, name);
        let udp = udp.unwrap_or_default();
        Some(Self {
            listen_overflows: *tcp_ext.get("ListenOverflows")?,
            listen_drops: *tcp_ext.get("ListenDrops")?,
            passive_opens: *tcp.get("PassiveOpens")?,
            sent_segments: *tcp.get("OutSegs")?,
            time_wait: read("sockstat")
                .and_then(|s| sockstat_time_wait(&s))
                .unwrap_or(0),
            received_segments: get(&tcp, "InSegs"),
            rcvq_drops: ext("TCPRcvQDrop") + ext("TCPOFODrop") + ext("RcvPruned"),
            rcvq_prunes: ext("PruneCalled"),
            received_packets: get(&ip, "InReceives") + v6("Ip6InReceives"),
            forwarded_packets: get(&ip, "ForwDatagrams") + v6("Ip6OutForwDatagrams"),
            received_datagrams: get(&udp, "InDatagrams")
                + get(&udp, "RcvbufErrors")
                + v6("Udp6InDatagrams")
                + v6("Udp6RcvbufErrors"),
            conntrack_full: read("stat/nf_conntrack").map_or(0, |t| parse_conntrack_full(&t)),
        })
    }

    /// Whether anything of TCP moved: a namespace with TCP load gets a workload of its
    /// own (its pod), the others only through their kernel counts.
    pub fn has_tcp_load(&self) -> bool {
        self.listen_overflows
            + self.listen_drops
            + self.passive_opens
            + self.sent_segments
            + self.time_wait
            > 0
    }

    pub fn since(&self, earlier: &Self) -> Self {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Self {
            listen_overflows: d(self.listen_overflows, earlier.listen_overflows),
            listen_drops: d(self.listen_drops, earlier.listen_drops),
            passive_opens: d(self.passive_opens, earlier.passive_opens),
            sent_segments: d(self.sent_segments, earlier.sent_segments),
            // A gauge: its latest value.
            time_wait: self.time_wait,
            received_segments: d(self.received_segments, earlier.received_segments),
            rcvq_drops: d(self.rcvq_drops, earlier.rcvq_drops),
            rcvq_prunes: d(self.rcvq_prunes, earlier.rcvq_prunes),
            received_packets: d(self.received_packets, earlier.received_packets),
            forwarded_packets: d(self.forwarded_packets, earlier.forwarded_packets),
            received_datagrams: d(self.received_datagrams, earlier.received_datagrams),
            conntrack_full: d(self.conntrack_full, earlier.conntrack_full),
        }
    }
}

/// The `early_drop` and `drop` columns of `/proc/net/stat/nf_conntrack`, summed over
/// its rows (one per CPU, in hex), found by the header's names: columns come and go
/// between kernels.
pub fn parse_conntrack_full(text: &str) -> u64 {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return 0;
    };
    let columns: Vec<usize> = header
        .split_whitespace()
        .enumerate()
        .filter(|(_, name)| matches!(*name, "drop" | "early_drop"))
        .map(|(i, _)| i)
        .collect();
    lines
        .flat_map(|row| {
            let values: Vec<&str> = row.split_whitespace().collect();
            columns
                .iter()
                .filter_map(move |&i| u64::from_str_radix(values.get(i)?, 16).ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Parses `/proc/net/snmp6`: one `Name value` pair per line.
pub fn parse_snmp6(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            Some((name.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// `tw` of the `TCP:` line of `/proc/net/sockstat`
/// (`TCP: inuse 3 orphan 0 tw 2 alloc 4 mem 1`).
fn sockstat_time_wait(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "tw")?;
    words.next()?.parse().ok()
}

/// Parses the header/value line pairs of `/proc/net/netstat` or `/proc/net/snmp`:
/// `Prefix: Name1 Name2` then `Prefix: 1 2`.
pub fn parse_netstat(text: &str) -> HashMap<String, HashMap<String, u64>> {
    let mut out: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut lines = text.lines();
    while let (Some(header), Some(values)) = (lines.next(), lines.next()) {
        let (Some((prefix, names)), Some((prefix2, numbers))) =
            (header.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if prefix != prefix2 {
            continue;
        }
        let group = out.entry(prefix.to_string()).or_default();
        for (name, number) in names.split_whitespace().zip(numbers.split_whitespace()) {
            // Some snmp fields are signed (`Tcp: MaxConn -1`); they are never counters.
            if let Ok(number) = number.parse() {
                group.insert(name.to_string(), number);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_wait_comes_from_sockstat() {
        let text =
            "sockets: used 190\nTCP: inuse 3 orphan 0 tw 27 alloc 4 mem 1\nUDP: inuse 1 mem 0\n";
        assert_eq!(sockstat_time_wait(text), Some(27));
        assert_eq!(sockstat_time_wait("UDP: inuse 1\n"), None);
    }

    #[test]
    fn conntrack_full_sums_early_drop_and_drop_of_every_cpu() {
        // As Linux 6.18 prints it (the entries column is the namespace's count).
        let text = "entries  clashres found new invalid ignore delete chainlength insert \
                    insert_failed drop early_drop icmp_error  expect_new expect_create \
                    expect_delete search_restart\n\
                    0003ffff  00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
                    00000000 00000005 00000002 000093e1 00000000  00000000 00000000 00000000 \
                    00000000\n\
                    0003ffff  00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
                    00000000 00000000 00000001 00000010 00000000  00000000 00000000 00000000 \
                    00000000\n";
        assert_eq!(parse_conntrack_full(text), 0x93e1 + 2 + 0x10 + 1);
        assert_eq!(parse_conntrack_full(""), 0);
        assert_eq!(parse_conntrack_full("entries found\n0001 0002\n"), 0);
    }

    #[test]
    fn parses_snmp6_pairs() {
        let text = "Ip6InReceives                   \t12\nUdp6InDatagrams \t3\nbogus\n";
        let parsed = parse_snmp6(text);
        assert_eq!(parsed["Ip6InReceives"], 12);
        assert_eq!(parsed["Udp6InDatagrams"], 3);
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn parses_netstat_pairs() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 7 9\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 3\n\
                    Tcp: RtoAlgorithm MaxConn\n\
                    Tcp: 1 -1\n";
        let parsed = parse_netstat(text);
        assert_eq!(parsed["TcpExt"]["ListenOverflows"], 7);
        assert_eq!(parsed["TcpExt"]["ListenDrops"], 9);
        assert_eq!(parsed["IpExt"]["InNoRoutes"], 3);
        assert!(!parsed["Tcp"].contains_key("MaxConn"));
        assert!(parse_netstat("garbage\nmore garbage\n").is_empty());
        assert!(parse_netstat("").is_empty());
    }

    #[test]
    fn reads_v2_path_from_proc_cgroup() {
        let hybrid = "12:cpu:/k\n1:name=systemd:/x\n0::/kubepods.slice/pod.slice\n";
        assert_eq!(
            crate::workloads::cgroup::cgroup_v2_path(hybrid).as_deref(),
            Some("/kubepods.slice/pod.slice")
        );
        assert_eq!(
            crate::workloads::cgroup::cgroup_v2_path("12:cpu:/k\n"),
            None
        );
    }

    #[test]
    fn sees_itself_and_its_namespace_counters() {
        let proc_root = Path::new("/proc");
        let me = std::process::id();
        let all = processes(proc_root);
        let mine = all
            .iter()
            .find(|p| p.pid == me)
            .expect("own process listed");
        assert_eq!(
            mine.netns as u64,
            fs::metadata("/proc/self/ns/net").unwrap().ino()
        );
        assert!(NetnsCounters::of_pid(proc_root, me).is_some());
        assert_eq!(NetnsCounters::of_pid(proc_root, u32::MAX), None);
    }
}
