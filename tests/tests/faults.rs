//! Faults around the agent: bad configuration, `/metrics` under many clients at once, a
//! Kubernetes API that refuses or answers garbage, SIGTERM while attaching, no tracefs.

use std::{
    collections::HashSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tuneprobe_tests::{
    ADDR_B, LoopDevice, NetnsPair, PodCgroup, Running, Workload, free_port, http_get, spawn_serve,
    tuneprobe_binary, unique, wait_for_metrics,
};

#[test]
fn invalid_configuration_is_one_line_and_exit_2() {
    for args in [
        vec!["snapshot", "--for", "1s", "--kube-api", "garbage"],
        vec!["snapshot", "--for", "1s", "--kube-api", "http://"],
        vec!["snapshot", "--for", "1s", "--kube-api", "ftp://host"],
        vec!["serve", "--kube-api", "127.0.0.1:8001"],
    ] {
        let out = Command::new(tuneprobe_binary())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("tuneprobe: ") && stderr.contains("--kube-api"),
            "{stderr}"
        );
        assert!(stderr.contains("http://127.0.0.1:8001"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// The metric family names of an exposition, in order.
fn families(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn metrics_scraped_by_many_clients_at_once() {
    let port = free_port();
    let serve = Running(
        Command::new(tuneprobe_binary())
            .args(["serve", "--kube-api", "none", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--pod-logs-dir", "/nonexistent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tuneprobe serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some((200, body)) = http_get(port, "/metrics") {
            break body;
        }
        assert!(Instant::now() < deadline, "serve never answered");
        thread::sleep(Duration::from_millis(100));
    };
    let expected = families(&first)
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        expected
            .iter()
            .any(|f| f == "tuneprobe_scrape_duration_seconds"),
        "{expected:?}"
    );
    let stable: Vec<String> = expected
        .iter()
        .filter(|f| {
            ["tuneprobe_probe", "tuneprobe_scrape", "tuneprobe_map"]
                .iter()
                .any(|p| f.starts_with(p))
        })
        .cloned()
        .collect();
    assert!(stable.len() >= 2, "{expected:?}");

    // 64 clients, 5 scrapes each, all at once: every answer complete and well formed.
    const CLIENTS: usize = 64;
    const SCRAPES: usize = 5;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                (0..SCRAPES)
                    .map(|_| http_get(port, "/metrics"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        for response in client.join().unwrap() {
            let (status, body) = response.expect("an answer to every scrape");
            assert_eq!(status, 200);
            // Workload series come and go with the machine's traffic; the agent's own
            // families are always there, and no family appears twice (interleaved
            // expositions would repeat them).
            let seen = families(&body);
            for family in &stable {
                assert!(
                    seen.contains(&family.as_str()),
                    "{family} missing: {seen:?}"
                );
            }
            let mut unique = seen.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), seen.len(), "a family repeated: {seen:?}");
            assert!(body.ends_with('\n'), "truncated exposition");
            answered += 1;
        }
    }
    assert_eq!(answered, CLIENTS * SCRAPES);
    // Still serving, and a bad path is still a clean 404.
    assert_eq!(http_get(port, "/metrics").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/nope").map(|r| r.0), Some(404));
    drop(serve);
}

/// stderr lines of a child, as they come.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits for the `ready` line, keeping every line seen.
fn wait_ready(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|l| l.starts_with("ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no ready line: {seen:?}"),
        }
    }
}

/// Runs a `tuneprobe snapshot` command: once it is ready, `n` datagrams go from A to a
/// closed port in B (socketless drops for B's pod). Returns its output and every stderr
/// line.
fn snapshot_with_drops(
    command: &mut Command,
    pair: &NetnsPair,
    n: u64,
) -> (std::process::Output, Vec<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tuneprobe");
    let lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    wait_ready(&lines, &mut seen);
    Workload::spawn(
        &pair.a,
        None,
        &["udp-send", &format!("{ADDR_B}:9"), &n.to_string(), "50"],
    )
    .wait(Duration::from_secs(20));
    let out = child.wait_with_output().expect("tuneprobe output");
    seen.extend(lines.try_iter());
    (out, seen)
}

/// A TCP server on loopback answering every connection with `answer`, until dropped.
struct JunkServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl JunkServer {
    fn start(answer: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut request = [0u8; 4096];
                        let _ = stream.read(&mut request);
                        let _ = stream.write_all(answer);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for JunkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn kube_api_unreachable_or_garbage_keeps_collecting_with_log_dir_names() {
    const N: u64 = 20;
    let pair = NetnsPair::new();
    let mut pod = PodCgroup::new();
    let app = pod.container();
    // The pod's process lives in namespace B, so B's drops are the pod's.
    let mut sink = Workload::spawn(
        &pair.b,
        Some(&app),
        &["udp-sink", &format!("{ADDR_B}:7001"), "4096"],
    );
    assert_eq!(sink.read_line(), "ready");
    let logs = std::env::temp_dir().join(unique("tuneprobe-logs-"));
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _logs = RemoveDir(logs.clone());
    std::fs::create_dir_all(logs.join(format!("pods/shop_api-7f9c4_{}/server", pod.uid))).unwrap();

    let refused = free_port();
    let junk = JunkServer::start(b"SSH-2.0-OpenSSH_9.2\r\n\x00\xff\xfe garbage\r\n\r\n");
    let not_json = JunkServer::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n<html>not a pod</html>",
    );
    let cases = [
        (format!("http://127.0.0.1:{refused}"), "Connection refused"),
        (
            format!("http://127.0.0.1:{}", junk.port),
            "request to the Kubernetes API failed",
        ),
        (
            format!("http://127.0.0.1:{}", not_json.port),
            "the Kubernetes API sent something that is not a pod list",
        ),
    ];
    for (url, why) in cases {
        let (out, seen) = snapshot_with_drops(
            Command::new(tuneprobe_binary())
                .args(["snapshot", "--for", "3s", "--json", "--kube-api", &url])
                .arg("--pod-logs-dir")
                .arg(logs.join("pods")),
            &pair,
            N,
        );
        assert!(out.status.success(), "{url}: exit {}: {seen:?}", out.status);

        // It says what is wrong with the API, and what it does instead.
        let complaint = seen
            .iter()
            .find(|l| l.contains(why))
            .unwrap_or_else(|| panic!("{url}: no line saying {why:?}: {seen:?}"));
        assert!(
            complaint.contains("Kubernetes API") && complaint.contains("pod log directory"),
            "{complaint}"
        );
        // And keeps collecting, naming the pod from its log directory.
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let workload = json["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["cgroup_id"] == pod.pod_id())
            .unwrap_or_else(|| panic!("{url}: no workload for the pod in {json:#}"));
        assert_eq!(workload["drops"]["by_reason"]["NO_SOCKET"], N, "{url}");
        assert_eq!(workload["namespace"], "shop", "{url}");
        assert_eq!(workload["pod"], "api-7f9c4", "{url}");
    }
}

/// Ids of the BPF objects behind `pid`'s descriptors: (programs, links, maps).
fn bpf_objects(pid: u32) -> [HashSet<u32>; 3] {
    let mut found: [HashSet<u32>; 3] = Default::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            for (i, field) in ["prog_id:", "link_id:", "map_id:"].iter().enumerate() {
                if let Some(id) = line.strip_prefix(field).and_then(|v| v.trim().parse().ok()) {
                    found[i].insert(id);
                }
            }
        }
    }
    found
}

fn bpf_object_exists(kind: &str, id: u32) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run bpftool")
        .success()
}

#[test]
fn sigterm_during_attach_leaves_nothing_attached() {
    // Stop after the first program, the fifth, and once all nine are in.
    let mut interrupted_mid_attach = false;
    for stage in [1, 5, 9] {
        let mut serve = spawn_serve(free_port(), &[]);
        let pid = serve.0.id();
        let mut seen: [HashSet<u32>; 3] = Default::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let at_kill = loop {
            let now = bpf_objects(pid);
            for (all, some) in seen.iter_mut().zip(&now) {
                all.extend(some);
            }
            if now[0].len() >= stage {
                break now[0].len();
            }
            assert!(Instant::now() < deadline, "stage {stage}: {seen:?}");
            assert!(serve.0.try_wait().unwrap().is_none(), "serve exited early");
            thread::sleep(Duration::from_millis(1));
        };
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = serve.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "stage {stage}: no exit after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        };
        // Before its handler is in place the default action ends it; after, it exits 0.
        use std::os::unix::process::ExitStatusExt as _;
        assert!(
            status.code() == Some(0) || status.signal() == Some(libc::SIGTERM),
            "stage {stage}: {status}"
        );
        interrupted_mid_attach |= at_kill < 9;
        assert!(!seen[0].is_empty() && !seen[2].is_empty(), "{seen:?}");
        // Nothing outlives it: no program, link or map (a pinned one would stay).
        let deadline = Instant::now() + Duration::from_secs(10);
        for (kind, ids) in ["prog", "link", "map"].iter().zip(&seen) {
            for &id in ids {
                while bpf_object_exists(kind, id) {
                    assert!(
                        Instant::now() < deadline,
                        "stage {stage}: {kind} {id} outlived the agent"
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    assert!(interrupted_mid_attach, "never caught it while attaching");
}

#[test]
fn without_tracefs_every_signal_still_works_and_it_says_so() {
    const N: u64 = 15;
    let pair = NetnsPair::new();
    // A private mount namespace where tracefs is gone and cannot be mounted: /sys/kernel
    // is an empty read-only tmpfs there (no `tracing` directory), BTF comes from a copy.
    let dir = std::env::temp_dir().join(unique("tuneprobe-notracefs-"));
    std::fs::create_dir_all(&dir).unwrap();
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _dir = RemoveDir(dir.clone());
    let btf = dir.join("vmlinux");
    std::fs::copy("/sys/kernel/btf/vmlinux", &btf).unwrap();
    let script = "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
                  mount -t tmpfs -o ro none /sys/kernel && exec \"$@\"";
    let (out, seen) = snapshot_with_drops(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(tuneprobe_binary())
            // The word about tracefs is information (`-v`), not a warning: nothing
            // of tuneprobe's needs it, and the DaemonSet never can mount it.
            .args([
                "-v",
                "snapshot",
                "--for",
                "3s",
                "--json",
                "--kube-api",
                "none",
            ])
            .args(["--pod-logs-dir", "/nonexistent", "--btf"])
            .arg(&btf),
        &pair,
        N,
    );
    assert!(out.status.success(), "exit {}: {seen:?}", out.status);
    let warning = seen
        .iter()
        .find(|l| l.contains("tracefs"))
        .unwrap_or_else(|| panic!("no word about tracefs: {seen:?}"));
    assert!(
        warning.contains("mounting it failed: No such file or directory")
            && warning.contains("every signal still works"),
        "{warning}"
    );
    assert!(
        seen.iter()
            .any(|l| l == "ready: 12 of 12 programs attached"),
        "{seen:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for probe in json["probes"].as_array().unwrap() {
        assert_eq!(probe["attached"], true, "{probe}");
    }
    // And it measures: the namespace's drops, exactly.
    let b = NetnsPair::inode(&pair.b);
    let workload = json["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["netns"] == b && w["cgroup_id"].is_null())
        .unwrap_or_else(|| panic!("no workload for namespace {b} in {json:#}"));
    assert_eq!(workload["drops"]["by_reason"]["NO_SOCKET"], N);
}

/// The agent's kernel map `name` (found through its descriptors): every entry's key and
/// value bytes, via bpftool.
fn agent_map(pid: u32, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let [_, _, maps] = bpf_objects(pid);
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| {
                        u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for id in maps {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .unwrap();
        let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if show["name"] != name {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["-j", "map", "dump", "id", &id.to_string()])
            .output()
            .unwrap();
        let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("dump JSON");
        return dump
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
            .collect();
    }
    panic!("the agent has no map {name}");
}

/// Sum of a counter family's series whose labels contain all of `labels`.
fn sum_series(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (reads completed, reads in flight) of a block device.
fn disk_reads(name: &str) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    let fields: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let inflight = std::fs::read_to_string(format!("/sys/block/{name}/inflight")).unwrap();
    let reads_in_flight = inflight.split_whitespace().next().unwrap().parse().unwrap();
    (fields[0], reads_in_flight)
}

#[test]
fn a_cgroup_removed_with_requests_in_flight() {
    let loop_dev = LoopDevice::new(32);
    let name = loop_dev.name().to_string();
    let mut pod = PodCgroup::with_controllers(&["blkio"]);
    let app = pod.container();
    // Reads of the container wait in the backing disk's throttle: the loop device's
    // requests stay in flight for seconds.
    let v1 = "blkio.throttle.read_iops_device";
    let backing = loop_dev.backing_device();
    match app.dirs.iter().find(|d| d.join(v1).exists()) {
        Some(dir) => std::fs::write(dir.join(v1), format!("{backing} 10")).unwrap(),
        None => std::fs::write(
            app.dir_with("io.max").join("io.max"),
            format!("{backing} riops=10"),
        )
        .unwrap(),
    }
    let port = free_port();
    let serve = spawn_serve(port, &["--pod-grace", "2s"]);
    let pid = serve.0.id();
    wait_for_metrics(port, "probe=\"block_rq_complete\"");
    let (reads_before, _) = disk_reads(&name);

    // The throttle is on the disk holding fio itself too: load it into the page cache
    // first, or its start-up reads crawl at 10 IOPS.
    let version = Command::new("fio")
        .arg("--version")
        .output()
        .expect("run fio");
    assert!(version.status.success());
    let filename = format!("--filename={}", loop_dev.device);
    let fio = Workload::spawn_program(
        None,
        Some(&app),
        std::path::Path::new("fio"),
        &[
            "--name=inflight",
            &filename,
            "--direct=1",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=libaio",
            "--iodepth=16",
            "--runtime=60",
            "--time_based",
        ],
    );
    // Wait until requests queue up, and a tick has named the container.
    let deadline = Instant::now() + Duration::from_secs(40);
    while disk_reads(&name).1 < 8 {
        assert!(
            Instant::now() < deadline,
            "fio never queued reads: {:?} in flight, dio {}, {}",
            disk_reads(&name),
            std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default(),
            std::fs::read_to_string(app.dirs[0].join("cgroup.procs")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(1500));
    // Throttled reads are released in bursts: on a loaded host the queue can be empty
    // for a moment; wait for it to fill again rather than judge one instant.
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk_reads(&name).1 == 0 {
        assert!(Instant::now() < deadline, "nothing in flight");
        thread::sleep(Duration::from_millis(20));
    }

    // Move fio out (its queued reads keep their cgroup) and remove the container.
    let pids: Vec<String> = app
        .dirs
        .iter()
        .flat_map(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    assert!(!pids.is_empty());
    for dir in &app.dirs {
        let mut root = dir.clone();
        for _ in app.path.trim_start_matches('/').split('/') {
            root.pop();
        }
        for pid in &pids {
            std::fs::write(root.join("cgroup.procs"), pid).unwrap();
        }
    }
    let in_flight_at_removal = disk_reads(&name).1;
    for dir in &app.dirs {
        std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
    }
    for pid in &pids {
        // SAFETY: plain syscall on a process this test started.
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while disk_reads(&name).1 > 0 {
        assert!(Instant::now() < deadline, "reads never completed");
        thread::sleep(Duration::from_millis(50));
    }
    drop(fio);
    let (reads_after, _) = disk_reads(&name);
    let completed = reads_after - reads_before;
    assert!(in_flight_at_removal > 0 && completed > 0);

    // Every completed read is counted once, for the removed container (never anyone
    // else), and no request state is left in the kernel.
    let device = format!("device=\"{name}\"");
    let family = "tuneprobe_block_service_seconds_count";
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (_, body) = http_get(port, "/metrics").expect("metrics");
        if sum_series(&body, family, &[&device, "op=\"read\""]) == completed as f64 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{completed} reads completed, counted: {}",
            sum_series(&body, family, &[&device, "op=\"read\""])
        );
        thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{completed} reads completed, {in_flight_at_removal} in flight at rmdir");
    for line in body
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(&device))
    {
        assert!(
            line.contains(&format!("pod=\"{}\"", pod.uid))
                || line.contains("pod=\"\",container=\"\",cgroup=\"\""),
            "a read counted for someone else: {line}"
        );
    }
    // The container was named while it lived (the agent ticks every second): all its.
    let container_label = format!("container=\"{}\"", &app.container_id[..12]);
    assert_eq!(
        sum_series(&body, family, &[&device, &container_label]),
        completed as f64,
        "{body}"
    );
    let dev = (7u32 << probe_common::block_io::MINOR_BITS)
        | name.trim_start_matches("loop").parse::<u32>().unwrap();
    // `InFlightRequest { insert_ns, issue_ns, key: BlockKey { cgroup_id, dev, op } }`.
    let left: Vec<_> = agent_map(pid, "BLOCK_IN_FLIGHT")
        .into_iter()
        .filter(|(_, v)| v.len() >= 28 && u32::from_ne_bytes(v[24..28].try_into().unwrap()) == dev)
        .collect();
    assert!(left.is_empty(), "request state left: {left:?}");

    // After the grace period the removed container's series and entries are gone too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = http_get(port, "/metrics").expect("metrics");
        let series = sum_series(&body, family, &[&device, &format!("pod=\"{}\"", pod.uid)]);
        let entries = agent_map(pid, "BLOCK_IO")
            .into_iter()
            .filter(|(k, _)| {
                k.len() >= 12 && u32::from_ne_bytes(k[8..12].try_into().unwrap()) == dev
            })
            .count();
        if series == 0.0 && entries == 0 {
            // The deletions are counted: in this scrape, or (if the map was read after a
            // tick that this scrape did not see) in the next one.
            let deleted = |body: &str| {
                sum_series(
                    body,
                    "tuneprobe_gc_deleted_entries_total",
                    &["map=\"BLOCK_IO\""],
                )
            };
            let mut body = body;
            let counted_by = Instant::now() + Duration::from_secs(5);
            while deleted(&body) < 1.0 && Instant::now() < counted_by {
                thread::sleep(Duration::from_millis(300));
                body = http_get(port, "/metrics").expect("metrics").1;
            }
            let gc_lines: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("tuneprobe_gc_deleted_entries_total"))
                .collect();
            assert!(
                deleted(&body) >= 1.0,
                "entries gone but no deletion counted: {gc_lines:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the grace period: {series} reads still reported, {entries} entries"
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert!(
        serve.0.id() == pid && http_get(port, "/metrics").is_some(),
        "serve died"
    );
}
