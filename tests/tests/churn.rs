//! Churn: thousands of kubelet-style cgroups and hundreds of network namespaces created
//! and removed while `tuneprobe serve` runs. Their kernel map entries are deleted after
//! the grace period, their series leave `/metrics`, a workload that stays keeps its
//! counts, and the agent's memory stays flat.
//!
//! Only this test's own cgroup ids and namespace inodes are counted: the maps are those
//! of the agent this test starts, read with bpftool, and other tests may run meanwhile.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::UdpSocket,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use tuneprobe_tests::{
    PodCgroup, agent_maps, free_port, http_get, map_keys, spawn_serve, wait_for_metrics,
};

const GRACE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 10;
const PODS_PER_ROUND: usize = 200;
const NETNS_PER_ROUND: usize = 30;

fn metrics(port: u16) -> Option<String> {
    http_get(port, "/metrics").and_then(|(status, body)| (status == 200).then_some(body))
}

/// The value of the one series of `family` whose labels contain all of `labels`.
fn series(body: &str, family: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `pod` label of a series (without the API, the pod UID).
fn pod_label(line: &str) -> Option<&str> {
    let rest = line.split_once("pod=\"")?.1;
    rest.split_once('"').map(|(uid, _)| uid)
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn u64_at(key: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(key[at..at + 8].try_into().unwrap())
}

fn u32_at(key: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(key[at..at + 4].try_into().unwrap())
}

/// The entries of the agent's maps that belong to `cgroups` or `netns`: per map name.
/// All keys start with the cgroup id; drop and retransmit keys carry the namespace next.
fn own_entries(
    maps: &HashMap<String, u32>,
    cgroups: &HashSet<u64>,
    netns: &HashSet<u32>,
) -> HashMap<&'static str, usize> {
    let mut counts = HashMap::new();
    for name in [
        "DNS_COUNTERS",
        "DNS_LATENCY",
        "DNS_IN_FLIGHT",
        "DROPS",
        "TCP_RETRANSMITS",
    ] {
        let keys = map_keys(maps[name]);
        let own = keys
            .iter()
            .filter(|k| {
                cgroups.contains(&u64_at(k, 0))
                    || (matches!(name, "DROPS" | "TCP_RETRANSMITS")
                        && netns.contains(&u32_at(k, 8)))
            })
            .count();
        counts.insert(name, own);
    }
    counts
}

/// Inodes of the network namespaces alive now: of a process, or of a bind mount.
fn live_netns() -> HashSet<u32> {
    let mut live: HashSet<u32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::metadata(e.path().join("ns/net")).ok())
        .map(|m| m.ino() as u32)
        .collect();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    live.extend(mountinfo.lines().filter_map(|l| {
        l.split_whitespace()
            .nth(3)?
            .strip_prefix("net:[")?
            .strip_suffix(']')?
            .parse::<u32>()
            .ok()
    }));
    live
}

/// A DNS question for `churn.test` (type A), as a resolver library would send it.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["churn", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The v2 directory this process lives in, to come back to.
fn own_v2_cgroup() -> PathBuf {
    let unified = tuneprobe::workloads::cgroup::cgroup2_mount().expect("cgroup v2");
    let line = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v2 line");
    unified.join(path.trim_start_matches('/'))
}

/// While alive, this whole process sits in a container's v2 cgroup (sockets take the
/// cgroup of the task creating them); it moves back on drop, panics included, before
/// the cgroup fixture kills what is left inside.
struct Inside {
    home: PathBuf,
}

impl Inside {
    fn enter(dir: &std::path::Path, home: &std::path::Path) -> Self {
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .expect("enter the cgroup");
        Self {
            home: home.to_path_buf(),
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("leave the cgroup");
    }
}

/// One DNS query to a closed loopback port from a socket of the container's cgroup.
fn query_from(container: &tuneprobe_tests::Container, home: &std::path::Path, id: u16) {
    let _inside = Inside::enter(&container.dirs[0], home);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&dns_query(id), "127.0.0.1:53").unwrap();
}

/// A network namespace that lives only as long as one thread: loopback up, one UDP
/// datagram to a closed port (a `NO_SOCKET` drop keyed by the namespace). Its inode.
fn short_lived_netns() -> u32 {
    thread::spawn(|| {
        // SAFETY: plain syscalls on this thread's own namespace and a socket it owns.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNET), 0, "unshare");
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
                *dst = *src as libc::c_char;
            }
            assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr), 0);
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr), 0);
            libc::close(fd);
        }
        let inode = fs::metadata("/proc/thread-self/ns/net").unwrap().ino() as u32;
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.send_to(b"churn", "127.0.0.1:9").unwrap();
        inode
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn churn_leaves_no_state_behind() {
    let home = own_v2_cgroup();
    let port = free_port();
    let serve = spawn_serve(
        port,
        &[
            "--pod-grace",
            &format!("{}s", GRACE.as_secs()),
            // Tuning verdicts keep a minute of per-workload samples by default: bounded
            // by time, but longer than this test. A short window lets RSS show the rest.
            "--verify-window",
            "3s",
        ],
    );
    let pid = serve.0.id();
    wait_for_metrics(port, "tuneprobe_probe_attached{probe=\"dns_egress\"");
    let maps = agent_maps(pid);

    // A pod that lives through the churn: its counts must survive every collection.
    let mut survivor = PodCgroup::new();
    let survivor_container = survivor.container();
    query_from(&survivor_container, &home, 1);

    let mut cgroups: HashSet<u64> = HashSet::new();
    let mut namespaces: HashSet<u32> = HashSet::new();
    let mut uids: HashSet<String> = HashSet::new();
    let mut rss_middle = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut round_cgroups = HashSet::new();
        let mut round_netns = HashSet::new();
        let mut alive = Vec::new();
        for i in 0..PODS_PER_ROUND {
            let mut pod = PodCgroup::new();
            let container = pod.container();
            query_from(&container, &home, (round * PODS_PER_ROUND + i) as u16);
            round_cgroups.insert(container.cgroup_id);
            uids.insert(pod.uid.clone());
            alive.push(pod);
        }
        // Pods live across a collection or two, so the agent names them, then go.
        thread::sleep(Duration::from_millis(1200));
        drop(alive);
        for _ in 0..NETNS_PER_ROUND {
            round_netns.insert(short_lived_netns());
        }
        // Every workload of this round made its entry (the grace period has not passed).
        let own = own_entries(&maps, &round_cgroups, &HashSet::new());
        assert_eq!(
            own["DNS_COUNTERS"], PODS_PER_ROUND,
            "round {round}: {own:?}"
        );
        // The kernel recycles namespace inodes (even within a round): each inode of
        // this round has its entry, and nothing of this round was deleted early.
        let keyed: HashSet<u32> = map_keys(maps["DROPS"])
            .iter()
            .map(|k| u32_at(k, 8))
            .filter(|netns| round_netns.contains(netns))
            .collect();
        assert_eq!(
            keyed, round_netns,
            "round {round}: namespaces without an entry"
        );
        cgroups.extend(round_cgroups);
        namespaces.extend(round_netns);
        if round == ROUNDS / 2 - 1 {
            // Past the first grace periods: what the agent keeps from now on is steady.
            rss_middle = rss_kib(pid);
        }
    }
    let churn_time = started.elapsed();
    let rss_end = rss_kib(pid);
    assert_eq!(cgroups.len(), ROUNDS * PODS_PER_ROUND);
    assert!(namespaces.len() >= NETNS_PER_ROUND, "{namespaces:?}");

    // The last round's pods are still reported inside their grace period.
    let during = metrics(port).expect("metrics");
    let reported = during
        .lines()
        .filter(|l| pod_label(l).is_some_and(|uid| uids.contains(uid)))
        .count();
    assert!(
        reported >= PODS_PER_ROUND,
        "{reported} series of the last round: {}",
        during
            .lines()
            .filter(|l| l.starts_with("tuneprobe_dns_queries_total"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // After the grace period (and the next collections) nothing of them is left.
    // A recycled inode that another live namespace holds now (another test's) has
    // entries of its own.
    let deadline = Instant::now() + GRACE * 4 + Duration::from_secs(10);
    let left = loop {
        let ours: HashSet<u32> = namespaces.difference(&live_netns()).copied().collect();
        let own = own_entries(&maps, &cgroups, &ours);
        if own.values().all(|&n| n == 0) {
            break own;
        }
        assert!(
            Instant::now() < deadline,
            "entries left after the grace period: {own:?}"
        );
        thread::sleep(Duration::from_millis(500));
    };
    assert!(left.values().all(|&n| n == 0));
    let after = metrics(port).expect("metrics");
    let stale: Vec<&str> = after
        .lines()
        .filter(|l| pod_label(l).is_some_and(|uid| uids.contains(uid)))
        .collect();
    assert!(
        stale.is_empty(),
        "series of deleted pods: {:?}",
        &stale[..stale.len().min(5)]
    );
    // The agent counted what it deleted: at least ours (others' churn may add).
    let deleted = |map: &str| {
        series(
            &after,
            "tuneprobe_gc_deleted_entries_total",
            &[&format!("map=\"{map}\"")],
        )
        .unwrap_or(0.0) as usize
    };
    assert!(deleted("DNS_COUNTERS") >= cgroups.len(), "{after}");
    assert!(deleted("DROPS") >= namespaces.len(), "{after}");
    // Queries still waiting when their pod went are deleted with it (the rest timed out).
    assert!(deleted("DNS_IN_FLIGHT") > 0, "{after}");

    // The survivor keeps its count through all of it, and counts on from there.
    let survivor_labels = [&*format!("pod=\"{}\"", survivor.uid)];
    assert_eq!(
        series(&after, "tuneprobe_dns_queries_total", &survivor_labels),
        Some(1.0),
        "survivor's queries"
    );
    query_from(&survivor_container, &home, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while series(
        &metrics(port).unwrap(),
        "tuneprobe_dns_queries_total",
        &survivor_labels,
    ) != Some(2.0)
    {
        assert!(
            Instant::now() < deadline,
            "survivor's second query not counted"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let survivor_ids = HashSet::from([survivor_container.cgroup_id]);
    assert_eq!(
        own_entries(&maps, &survivor_ids, &HashSet::new())["DNS_COUNTERS"],
        1
    );

    // Memory: flat between the middle and the end of the churn.
    let rss_after = rss_kib(pid);
    eprintln!(
        "{} pods, {} namespace inodes in {churn_time:?}; agent RSS {rss_middle} KiB mid-churn, {rss_end} KiB at its end, {rss_after} KiB after collection and scrapes",
        cgroups.len(),
        namespaces.len()
    );
    assert!(
        rss_end < rss_middle + 5 * 1024,
        "RSS grew from {rss_middle} KiB to {rss_end} KiB"
    );
    // Rendering /metrics with the last round's 200 pods raises the allocator's high-water
    // mark a little; still bounded.
    assert!(
        rss_after < rss_middle + 8 * 1024,
        "RSS grew from {rss_middle} KiB to {rss_after} KiB"
    );
    assert!(
        churn_time < Duration::from_secs(45),
        "churn took {churn_time:?}"
    );
    drop(survivor);
}
