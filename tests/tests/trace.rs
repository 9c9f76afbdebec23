//! `tuneprobe trace` end to end: the release binary traces retransmits, drops and DNS
//! produced in the test's own namespaces and cgroups; every event of the test workload
//! is checked (count, addresses, reason, query name, response code), a trace filtered on
//! another namespace or pod prints nothing, a flood that overflows a small ring buffer
//! is reported as lost, and malformed DNS responses do not break the decoder.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tuneprobe_tests::{
    ADDR_A, ADDR_B, Container, LoopDevice, NetnsPair, NftTable, PodCgroup, Workload,
    tuneprobe_binary, unique,
};

const WAIT: Duration = Duration::from_secs(30);

/// A running `tuneprobe trace ... --json`, stopped with SIGINT (Ctrl-C).
struct Trace {
    child: Child,
    stdout: Option<thread::JoinHandle<Vec<Value>>>,
    stderr: mpsc::Receiver<String>,
}

impl Trace {
    fn start(args: &[&str], logs: &PodLogs) -> Self {
        let mut child = Command::new(tuneprobe_binary())
            .arg("trace")
            .args(args)
            .args(["--json", "--kube-api", "none", "--pod-logs-dir"])
            .arg(logs.dir.join("pods"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tuneprobe trace");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let stdout = thread::spawn(move || {
            stdout
                .lines()
                .map_while(Result::ok)
                .map(|line| serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
                .collect()
        });
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("tuneprobe trace did not print `ready`");
            if line.contains("ready") {
                break;
            }
        }
        Self {
            child,
            stdout: Some(stdout),
            stderr: rx,
        }
    }

    /// Ctrl-C, then the events printed and the total lost count from the last line.
    fn stop(mut self) -> (Vec<Value>, u64) {
        // Events of the last moment are still in the ring buffer: let them be read.
        thread::sleep(Duration::from_millis(500));
        // SAFETY: plain syscall on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for trace");
        assert!(status.success(), "trace exited with {status}");
        let events = self
            .stdout
            .take()
            .and_then(|reader| reader.join().ok())
            .expect("stdout reader");
        // Everything it printed after `ready`, to the end of the pipe: right after
        // wait() the reader thread may not have passed the last lines on yet (CI once
        // found none, the `lost` line still in flight).
        let mut stderr: Vec<String> = Vec::new();
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            stderr.push(line);
        }
        let last = stderr
            .iter()
            .rev()
            .find(|l| l.starts_with("lost "))
            .unwrap_or_else(|| panic!("no lost count on stderr: {stderr:?}"));
        let lost = last
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad lost line {last}"));
        (events, lost)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubelet log directory naming the test's pods and containers; removed on drop.
struct PodLogs {
    dir: PathBuf,
}

impl PodLogs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("tuneprobe-trace-logs-"));
        std::fs::create_dir_all(dir.join("pods")).unwrap();
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        Self { dir }
    }

    /// Names `container` of `pod` as `namespace/name/container_name`.
    fn name(&self, pod: &PodCgroup, namespace: &str, name: &str, container: &Container, c: &str) {
        std::fs::create_dir_all(
            self.dir
                .join(format!("pods/{namespace}_{name}_{}/{c}", pod.uid)),
        )
        .unwrap();
        let log = format!("{name}_{namespace}_{c}-{}.log", container.container_id);
        std::fs::write(self.dir.join("containers").join(log), "").unwrap();
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing in {event}"))
}

fn count(events: &[Value], key: &str, value: &str) -> usize {
    events.iter().filter(|e| e[key] == value).count()
}

#[test]
fn retransmits_are_the_pods_and_filtered_traces_print_nothing() {
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let lossy = pod.container();
    let logs = PodLogs::new();
    logs.name(&pod, "shop", "api", &lossy, "sender");
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:5001")]);
    assert_eq!(sink.read_line(), "ready");
    // Drops exactly one packet: the first data segment to port 5001.
    let nft = NftTable::with_rule(
        &pair,
        &pair.b,
        "input",
        "tcp dport 5001 meta length > 200 limit rate 1/hour burst 1 packets counter drop",
    );

    let ours = Trace::start(&["retransmits", "--namespace", "shop"], &logs);
    let elsewhere = Trace::start(&["retransmits", "--namespace", "not-shop"], &logs);
    let by_pod_uid = Trace::start(&["retransmits", "--pod", &pod.uid], &logs);
    let segs_before = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs");
    Workload::spawn(
        &pair.a,
        Some(&lossy),
        &["tcp-send", &format!("{ADDR_B}:5001"), "1000000"],
    )
    .wait(WAIT);
    let segs = pair.counter(&pair.a, "snmp", "Tcp", "RetransSegs") - segs_before;
    let (events, lost) = ours.stop();
    let (other, _) = elsewhere.stop();
    let (by_uid, _) = by_pod_uid.stop();

    assert_eq!(nft.packets(), 1, "the rule drops exactly one packet");
    assert!(segs >= 1, "the kernel retransmitted nothing?");
    assert_eq!(lost, 0);
    assert!(!events.is_empty(), "no retransmit traced");
    for event in &events {
        assert_eq!(field(event, "signal"), "retransmits");
        assert_eq!(field(event, "namespace"), "shop");
        assert_eq!(field(event, "pod"), "api");
        assert_eq!(field(event, "container"), "sender");
        assert_eq!(field(event, "pod_uid"), pod.uid);
        assert_eq!(field(event, "container_id"), lossy.container_id);
        assert_eq!(event["cgroup_id"], lossy.cgroup_id);
        assert_eq!(field(event, "saddr"), ADDR_A);
        assert_eq!(field(event, "daddr"), ADDR_B);
        assert_eq!(event["dport"], 5001);
        assert_eq!(field(event, "state"), "ESTABLISHED");
        assert_eq!(event["failed"], false);
        assert!(field(event, "time").ends_with('Z'));
    }
    // Every retransmitted segment of the sender's namespace is in exactly one event.
    let traced: u64 = events.iter().map(|e| e["segments"].as_u64().unwrap()).sum();
    assert_eq!(traced, segs, "{events:#?}");
    let timeless = |events: &[Value]| -> Vec<Value> {
        let mut events = events.to_vec();
        // Each process dates kernel timestamps with its own clock reading.
        for event in &mut events {
            event.as_object_mut().unwrap().remove("time");
        }
        events
    };
    assert_eq!(
        timeless(&by_uid),
        timeless(&events),
        "--pod UID sees the same events"
    );
    assert!(
        other.is_empty(),
        "another namespace's trace printed {other:#?}"
    );
}

#[test]
fn drops_carry_reason_location_and_addresses() {
    const CLOSED: usize = 30;
    const FILTERED: usize = 20;
    let pair = NetnsPair::new();
    let mut receiver = PodCgroup::new();
    let app = receiver.container();
    let logs = PodLogs::new();
    logs.name(&receiver, "shop", "db", &app, "postgres");
    // The receiving pod: a process living in namespace B, in the pod's container.
    let mut pause = Workload::spawn(&pair.b, Some(&app), &["pause"]);
    assert_eq!(pause.read_line(), "ready");
    let _nft = NftTable::with_rule(&pair, &pair.b, "input", "udp dport 7777 counter drop");

    let ours = Trace::start(&["drops", "--pod", "db"], &logs);
    let elsewhere = Trace::start(&["drops", "--pod", "not-db"], &logs);
    for (port, n) in [(9, CLOSED), (7777, FILTERED)] {
        let sent = Workload::spawn(
            &pair.a,
            None,
            &[
                "udp-send",
                &format!("{ADDR_B}:{port}"),
                &n.to_string(),
                "100",
            ],
        )
        .wait(WAIT);
        assert_eq!(sent.trim(), format!("sent {n}"));
    }
    let (events, lost) = ours.stop();
    let (other, _) = elsewhere.stop();

    assert_eq!(lost, 0);
    assert_eq!(
        events.len(),
        CLOSED + FILTERED,
        "exactly the test's packets: {events:#?}"
    );
    assert_eq!(count(&events, "reason", "NO_SOCKET"), CLOSED);
    assert_eq!(count(&events, "reason", "NETFILTER_DROP"), FILTERED);
    for event in &events {
        assert_eq!(field(event, "signal"), "drops");
        assert_eq!(field(event, "namespace"), "shop");
        assert_eq!(field(event, "pod"), "db");
        assert_eq!(field(event, "pod_uid"), receiver.uid);
        assert_eq!(field(event, "protocol"), "udp");
        assert_eq!(field(event, "saddr"), ADDR_A);
        assert_eq!(field(event, "daddr"), ADDR_B);
        assert_eq!(event["netns"], NetnsPair::inode(&pair.b));
        let location = field(event, "location");
        // Symbolised from /proc/kallsyms: `function+0xoffset`.
        assert!(location.contains("+0x"), "{location}");
        match field(event, "reason") {
            "NO_SOCKET" => {
                assert_eq!(event["dport"], 9);
                assert!(location.contains("udp"), "{location}");
            }
            _ => {
                assert_eq!(event["dport"], 7777);
                // nf_hook_slow, or nft_do_chain on kernels that pass the rule's caller.
                assert!(location.starts_with("nf"), "{location}");
            }
        }
    }
    assert!(other.is_empty(), "another pod's trace printed {other:#?}");
}

/// Binds a UDP socket inside namespace `ns` (sockets keep the namespace they were
/// created in, so a thread that entered it can hand the socket back).
fn bind_in_netns(ns: &str, addr: SocketAddr) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let netns = std::fs::File::open(path).expect("open netns");
        // SAFETY: plain syscall; only this short-lived thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        UdpSocket::bind(addr).expect("bind in netns")
    })
    .join()
    .expect("bind thread")
}

/// A server that answers every query with a response whose question is a compression
/// pointer to itself: valid header, undecodable name.
fn mangled_server(socket: UdpSocket) {
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..12].to_vec();
            reply[2] |= 0x80;
            reply[5] = 1;
            reply.extend([0xc0, 12, 0, 1, 0, 1]);
            let _ = socket.send_to(&reply, peer);
        }
    });
}

fn query(pair: &NetnsPair, container: &Container, server: &str, name: &str, n: u32, tcp: bool) {
    let out = Workload::spawn(
        &pair.a,
        Some(container),
        &[
            "dns-query",
            &format!("{server}:53"),
            name,
            &n.to_string(),
            if tcp { "tcp" } else { "udp" },
            "2000",
        ],
    )
    .wait(WAIT);
    assert!(out.starts_with(&format!("answered {n} ")), "{out}");
}

#[test]
fn dns_answers_are_decoded_and_malformed_ones_do_not_break_the_trace() {
    const DELAY_MS: f64 = 20.0;
    const MANGLED: &str = "10.200.0.3";
    let pair = NetnsPair::new();
    pair.add_address_b(MANGLED);
    let mut web = PodCgroup::new();
    let web_app = web.container();
    let mut other = PodCgroup::new();
    let other_app = other.container();
    let logs = PodLogs::new();
    logs.name(&web, "shop", "web", &web_app, "nginx");
    logs.name(&other, "shop", "other", &other_app, "app");
    let mut server = Workload::spawn(
        &pair.b,
        None,
        &["dns-server", &format!("{ADDR_B}:53"), "20", "3"],
    );
    assert_eq!(server.read_line(), "ready");
    mangled_server(bind_in_netns(
        &pair.b,
        format!("{MANGLED}:53").parse().unwrap(),
    ));

    let ours = Trace::start(&["dns", "--pod", "web"], &logs);
    let slow_only = Trace::start(&["dns", "--pod", "web", "--min-latency", "500ms"], &logs);
    query(&pair, &web_app, ADDR_B, "nope.test.local", 4, false);
    query(&pair, &web_app, ADDR_B, "nope.test.local", 2, true);
    query(&pair, &web_app, MANGLED, "bad.test.local", 3, false);
    // Garbage, answered with more garbage: malformed for the kernel, never an event.
    let garbage = Workload::spawn(
        &pair.a,
        Some(&web_app),
        &["dns-garbage", &format!("{MANGLED}:53"), "50"],
    )
    .wait(WAIT);
    assert!(garbage.starts_with("sent "), "{garbage}");
    // Another pod's lookups: outside the filter.
    query(&pair, &other_app, ADDR_B, "other.test.local", 3, false);
    let (events, lost) = ours.stop();
    let (slow, _) = slow_only.stop();

    assert_eq!(lost, 0);
    assert_eq!(events.len(), 9, "{events:#?}");
    let good: Vec<&Value> = events.iter().filter(|e| e["resolver"] == ADDR_B).collect();
    assert_eq!(good.len(), 6);
    for event in &good {
        assert_eq!(field(event, "signal"), "dns");
        assert_eq!(field(event, "pod"), "web");
        assert_eq!(field(event, "container"), "nginx");
        assert_eq!(event["cgroup_id"], web_app.cgroup_id);
        assert_eq!(field(event, "qname"), "nope.test.local");
        assert_eq!(field(event, "qtype"), "A");
        assert_eq!(field(event, "rcode"), "NXDOMAIN");
        let latency = event["latency_ms"].as_f64().unwrap();
        assert!(
            (DELAY_MS..DELAY_MS + 15.0).contains(&latency),
            "latency {latency}"
        );
    }
    assert_eq!(count(&events, "transport", "tcp"), 2);
    let mangled: Vec<&Value> = events.iter().filter(|e| e["resolver"] == MANGLED).collect();
    assert_eq!(mangled.len(), 3);
    for event in mangled {
        assert!(event["qname"].is_null(), "{event}");
        assert!(field(event, "decode_error").contains("pointer"), "{event}");
        assert!(event["latency_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(slow.is_empty(), "--min-latency 500ms printed {slow:#?}");
}

#[test]
fn a_flood_that_overflows_the_ring_buffer_is_counted_as_lost() {
    const N: usize = 100_000;
    let pair = NetnsPair::new();
    let mut receiver = PodCgroup::new();
    let app = receiver.container();
    let logs = PodLogs::new();
    logs.name(&receiver, "flood", "sink", &app, "app");
    let mut pause = Workload::spawn(&pair.b, Some(&app), &["pause"]);
    assert_eq!(pause.read_line(), "ready");

    // The smallest ring buffer: a few dozen events.
    let trace = Trace::start(&["drops", "--pod", "sink", "--buffer-size", "4096"], &logs);
    let sent = Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &N.to_string(), "16"],
    )
    .wait(WAIT);
    assert_eq!(sent.trim(), format!("sent {N}"));
    let (events, lost) = trace.stop();

    assert!(
        lost > 0,
        "nothing lost with {} events printed",
        events.len()
    );
    assert!(events.len() < N);
    // Each of our drops was either printed or counted as lost (the count is node-wide,
    // so it may include others' drops too).
    assert!(
        events.len() as u64 + lost >= N as u64,
        "{} printed + {lost} lost < {N}",
        events.len()
    );
    assert!(events.iter().all(|e| e["reason"] == "NO_SOCKET"));
}

/// fio's completed IOs for one job.
fn fio_reads(container: &Container, device: &str, seconds: u32) -> u64 {
    let args = [
        "--name=tuneprobe-trace",
        &format!("--filename={device}"),
        "--direct=1",
        "--rw=randread",
        "--bs=4k",
        "--iodepth=1",
        "--ioengine=psync",
        &format!("--runtime={seconds}"),
        "--time_based",
        "--output-format=json",
    ];
    let out = Workload::spawn_program(None, Some(container), std::path::Path::new("fio"), &args)
        .wait(Duration::from_secs(u64::from(seconds) + 30));
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("fio JSON: {e}: {out}"));
    json["jobs"][0]["read"]["total_ios"]
        .as_u64()
        .expect("total_ios")
}

fn block_ms(event: &Value) -> f64 {
    event["service_ms"].as_f64().unwrap() + event["queue_ms"].as_f64().unwrap()
}

#[test]
fn slow_block_requests_of_the_throttled_container_only() {
    let disk = LoopDevice::new(32);
    let mut pod = PodCgroup::with_controllers(&["blkio"]);
    let throttled = pod.container();
    let free = pod.container();
    let logs = PodLogs::new();
    logs.name(&pod, "batch", "etl", &throttled, "reader");
    // 100 read IOPS on the backing disk: about one request in ten waits ~100 ms.
    let backing = disk.backing_device();
    match throttled
        .dirs
        .iter()
        .find(|d| d.join("blkio.throttle.read_iops_device").exists())
    {
        Some(dir) => std::fs::write(
            dir.join("blkio.throttle.read_iops_device"),
            format!("{backing} 100"),
        )
        .unwrap(),
        None => std::fs::write(
            throttled.dir_with("io.max").join("io.max"),
            format!("{backing} riops=100"),
        )
        .unwrap(),
    }

    let everything = Trace::start(&["block", "--cgroup", &throttled.path], &logs);
    let slow = Trace::start(&["block", "--pod", "etl", "--min-latency", "20ms"], &logs);
    let free_only = Trace::start(
        &["block", "--cgroup", &free.path, "--min-latency", "20ms"],
        &logs,
    );
    let ios = fio_reads(&throttled, &disk.device, 2);
    let free_ios = fio_reads(&free, &disk.device, 1);
    let (all, lost_all) = everything.stop();
    let (slow, lost_slow) = slow.stop();
    let (free_slow, _) = free_only.stop();

    assert_eq!((lost_all, lost_slow), (0, 0));
    let on_loop: Vec<&Value> = all.iter().filter(|e| e["device"] == disk.name()).collect();
    // Every 4 KiB read is one request on the loop device (within fio's accounting).
    assert!(
        (on_loop.len() as u64).abs_diff(ios) * 100 <= 3 * ios,
        "{} traced vs fio's {ios}",
        on_loop.len()
    );
    for event in &on_loop {
        assert_eq!(field(event, "signal"), "block");
        assert_eq!(field(event, "op"), "read");
        assert_eq!(event["bytes"], 4096);
        assert_eq!(event["cgroup_id"], throttled.cgroup_id);
        assert_eq!(field(event, "container_id"), throttled.container_id);
    }
    // The slow trace filtered in the kernel: the slow loop requests of the full trace.
    // Two processes time the same request apart (microseconds, or an interrupt's worth
    // on a busy machine), so one that took almost exactly 20 ms may fall on either
    // side: the bounds allow for that only.
    let at_least = |ms: f64| on_loop.iter().filter(|e| block_ms(e) >= ms).count();
    let slow_on_loop = slow.iter().filter(|e| e["device"] == disk.name()).count();
    assert!(at_least(20.0) > 0, "the throttle delayed nothing");
    assert!(
        (at_least(20.5)..=at_least(19.5)).contains(&slow_on_loop),
        "{slow_on_loop} slow requests traced, the full trace has {} at 20 ms",
        at_least(20.0)
    );
    assert!(
        slow.iter()
            .all(|e| block_ms(e) >= 20.0 && e["pod"] == "etl")
    );
    assert!(free_ios > 0);
    assert!(
        free_slow.is_empty(),
        "the unthrottled container had slow requests: {free_slow:#?}"
    );
}

#[test]
fn throttle_stalls_match_cpu_stat() {
    let mut pod = PodCgroup::with_controllers(&["cpu"]);
    let limited = pod.container();
    let free = pod.container();
    let logs = PodLogs::new();
    logs.name(&pod, "batch", "cruncher", &limited, "main");
    let dir = limited.cpu_dir().to_path_buf();
    if dir.join("cpu.max").exists() {
        std::fs::write(dir.join("cpu.max"), "20000 100000").unwrap();
    } else {
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), "20000").unwrap();
    }
    let stat =
        || tuneprobe::signals::cpu_throttle::cpustat::CpuAccounting::read(&dir).expect("cpu.stat");

    let ours = Trace::start(&["throttle", "--pod", "cruncher"], &logs);
    let free_trace = Trace::start(&["throttle", "--cgroup", &free.path], &logs);
    let before = stat();
    let limited_busy = Workload::spawn_program(
        None,
        Some(&limited),
        &tuneprobe_tests::testload(),
        &["busy", "2000"],
    );
    let free_busy = Workload::spawn_program(
        None,
        Some(&free),
        &tuneprobe_tests::testload(),
        &["busy", "1000"],
    );
    limited_busy.wait(WAIT);
    free_busy.wait(WAIT);
    let delta = stat().since(&before);
    let (events, lost) = ours.stop();
    let (free_events, _) = free_trace.stop();

    assert_eq!(lost, 0);
    assert!(
        (15..=25).contains(&delta.throttled_periods),
        "2 s at 20% should throttle ~20 periods: {delta:?}"
    );
    // One stall per throttled switch-out of the single busy thread.
    assert!(
        (events.len() as u64).abs_diff(delta.throttled_periods) <= 2,
        "{} stalls vs nr_throttled +{}",
        events.len(),
        delta.throttled_periods
    );
    let stalled_ms: f64 = events.iter().map(|e| e["stall_ms"].as_f64().unwrap()).sum();
    let throttled_ms = delta.throttled_ns as f64 / 1e6;
    assert!(
        (stalled_ms - throttled_ms).abs() <= 0.1 * throttled_ms,
        "stalls {stalled_ms} ms vs throttled_time {throttled_ms} ms"
    );
    for event in &events {
        assert_eq!(field(event, "signal"), "throttle");
        assert_eq!(field(event, "container"), "main");
        assert_eq!(event["cgroup_id"], limited.cgroup_id);
        let stall = event["stall_ms"].as_f64().unwrap();
        assert!(stall < 200.0, "{stall}");
    }
    assert!(free_events.is_empty(), "{free_events:#?}");
}

#[test]
fn connections_end_with_their_outcome_and_the_closed_ones_with_their_rtt() {
    const REFUSED: u64 = 7;
    const SENDS: u64 = 3;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let client = pod.container();
    let logs = PodLogs::new();
    logs.name(&pod, "shop", "api", &client, "client");
    let mut sink = Workload::spawn(&pair.b, None, &["tcp-sink", &format!("{ADDR_B}:5400")]);
    assert_eq!(sink.read_line(), "ready");

    let ours = Trace::start(&["connections", "--pod", "api"], &logs);
    let elsewhere = Trace::start(&["connections", "--pod", "not-api"], &logs);
    let refused = Workload::spawn(
        &pair.a,
        Some(&client),
        &[
            "tcp-connects",
            &format!("{ADDR_B}:5401"),
            &REFUSED.to_string(),
            "0",
        ],
    )
    .wait(WAIT);
    assert!(
        refused.starts_with(&format!("connected 0 refused {REFUSED} ")),
        "{refused}"
    );
    for _ in 0..SENDS {
        Workload::spawn(
            &pair.a,
            Some(&client),
            &["tcp-send", &format!("{ADDR_B}:5400"), "100000"],
        )
        .wait(WAIT);
    }
    let (events, lost) = ours.stop();
    let (other, _) = elsewhere.stop();

    assert_eq!(lost, 0);
    assert!(other.is_empty(), "{other:#?}");
    let with = |outcome: &str| -> Vec<&Value> {
        events.iter().filter(|e| e["outcome"] == outcome).collect()
    };
    assert_eq!(with("refused").len() as u64, REFUSED, "{events:#?}");
    for event in with("refused") {
        assert_eq!(field(event, "signal"), "connections");
        assert_eq!(field(event, "container"), "client");
        assert_eq!(event["cgroup_id"], client.cgroup_id);
        assert_eq!(field(event, "direction"), "active");
        assert_eq!(event["dport"], 5401);
        assert_eq!(field(event, "state"), "CLOSE");
        assert!(event["srtt_ms"].is_null(), "{event}");
    }
    let closed = with("closed");
    assert_eq!(closed.len() as u64, SENDS, "{events:#?}");
    for event in closed {
        assert_eq!(event["dport"], 5400);
        assert_eq!(field(event, "saddr"), ADDR_A);
        assert_eq!(field(event, "daddr"), ADDR_B);
        assert!(event["srtt_ms"].as_f64().unwrap() > 0.0, "{event}");
        assert!(event["duration_ms"].as_f64().unwrap() > 0.0, "{event}");
    }
    assert_eq!(events.len() as u64, REFUSED + SENDS, "{events:#?}");
}
