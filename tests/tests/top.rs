//! `tuneprobe top` under tmux: keys typed with `send-keys`, the screen read with
//! `capture-pane`. Two pods receive UDP to a closed port at steady, different rates in
//! their own namespaces; the test finds their rows with the expected drop rates, then
//! sorts, reverses, filters by namespace and by pod, and opens a detail view. The plain
//! `--once` table is checked too.

use std::{
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tuneprobe_tests::{
    ADDR_B, Container, NetnsPair, PodCgroup, Workload, tuneprobe_binary, unique,
};

/// A kubelet log directory naming the test's pods; removed on drop.
struct PodLogs {
    dir: PathBuf,
}

impl PodLogs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("tuneprobe-top-logs-"));
        std::fs::create_dir_all(dir.join("pods")).unwrap();
        std::fs::create_dir_all(dir.join("containers")).unwrap();
        Self { dir }
    }

    fn name(&self, pod: &PodCgroup, namespace: &str, name: &str, container: &Container) {
        std::fs::create_dir_all(
            self.dir
                .join(format!("pods/{namespace}_{name}_{}/app", pod.uid)),
        )
        .unwrap();
        let log = format!("{name}_{namespace}_app-{}.log", container.container_id);
        std::fs::write(self.dir.join("containers").join(log), "").unwrap();
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pod living in namespace B of its own pair, receiving `per_tick` datagrams to a
/// closed port every 100 ms from namespace A: NO_SOCKET drops at a steady rate.
struct DroppingPod {
    _pair: NetnsPair,
    pod: PodCgroup,
    _pause: Workload,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
}

impl DroppingPod {
    fn new(logs: &PodLogs, namespace: &str, name: &str, per_tick: u64) -> Self {
        let pair = NetnsPair::new();
        let mut pod = PodCgroup::new();
        let app = pod.container();
        logs.name(&pod, namespace, name, &app);
        let mut pause = Workload::spawn(&pair.b, Some(&app), &["pause"]);
        assert_eq!(pause.read_line(), "ready");
        let socket = bind_in_netns(&pair.a);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (Arc::clone(&stop), Arc::clone(&sent));
        thread::spawn(move || {
            let target = format!("{ADDR_B}:9");
            let mut next = Instant::now();
            while !stop_flag.load(Ordering::Relaxed) {
                for _ in 0..per_tick {
                    if socket.send_to(&[0u8; 16], &target).is_ok() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += Duration::from_millis(100);
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Self {
            _pair: pair,
            pod,
            _pause: pause,
            stop,
            sent,
            started: Instant::now(),
        }
    }

    /// Datagrams per second so far.
    fn rate(&self) -> f64 {
        self.sent.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }
}

impl Drop for DroppingPod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Let the sender see the flag before its namespace goes away.
        thread::sleep(Duration::from_millis(150));
    }
}

fn bind_in_netns(ns: &str) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let netns = std::fs::File::open(path).expect("open netns");
        // SAFETY: plain syscall; only this short-lived thread changes namespace.
        assert_eq!(
            unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        UdpSocket::bind("0.0.0.0:0").expect("bind in netns")
    })
    .join()
    .expect("bind thread")
}

/// A tmux server private to the test (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &[String]) -> Self {
        let tmux = Self {
            socket: unique("tuneprobe-top-"),
        };
        let status = Command::new("tmux")
            .args([
                "-L",
                &tmux.socket,
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .args(command)
            .status()
            .expect("run tmux (cargo xtask setup installs it)");
        assert!(status.success());
        tmux
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "top"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `check` accepts the screen; panics with the last screen otherwise.
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what}; screen:\n{screen}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn running(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "top"])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The cells of the table row whose first cell is `name`.
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen.lines().find_map(|line| {
        let cells: Vec<&str> = line
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .collect();
        (cells.first() == Some(&name)).then_some(cells)
    })
}

/// The line index of a row, to compare orders.
fn position(screen: &str, name: &str) -> Option<usize> {
    screen.lines().position(|line| {
        line.trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .next()
            == Some(name)
    })
}

/// Drops/s shown for `name`, if its row is on screen with NO_SOCKET as top reason.
fn drop_rate(screen: &str, name: &str) -> Option<f64> {
    let cells = row(screen, name)?;
    (cells.get(3) == Some(&"NO_SOCKET")).then(|| cells[2].parse().ok())?
}

fn near(shown: f64, expected: f64) -> bool {
    (shown - expected).abs() <= 0.25 * expected
}

#[test]
fn top_shows_the_pods_rates_then_sorts_filters_and_details_under_tmux() {
    let logs = PodLogs::new();
    let busy = DroppingPod::new(&logs, "shop", "busy-pod", 20);
    let quiet = DroppingPod::new(&logs, "backend", "quiet-pod", 2);
    let tmux = Tmux::start(&[
        tuneprobe_binary().display().to_string(),
        "top".to_string(),
        "--kube-api".to_string(),
        "none".to_string(),
        "--pod-logs-dir".to_string(),
        logs.dir.join("pods").display().to_string(),
    ]);

    // Both rows, each with its own rate (200/s and 20/s) and reason, keys on screen.
    let screen = tmux.wait_for("rows with the expected drop rates", |s| {
        drop_rate(s, "shop/busy-pod").is_some_and(|r| near(r, busy.rate()))
            && drop_rate(s, "backend/quiet-pod").is_some_and(|r| near(r, quiet.rate()))
    });
    assert!(
        screen.contains("q quit") && screen.contains("/ filter"),
        "{screen}"
    );
    assert!(screen.contains("sort: DROPS/s"), "{screen}");
    let busy_row = row(&screen, "shop/busy-pod").unwrap();
    // No retransmits, DNS, block IO, quota or TCP connections for this pod.
    assert_eq!(busy_row[1], "0");
    assert_eq!(&busy_row[4..], ["0", "-", "-", "-", "0", "0", "-"]);
    assert!(
        position(&screen, "shop/busy-pod") < position(&screen, "backend/quiet-pod"),
        "sorted by drops/s, the busier pod first:\n{screen}"
    );

    // Reverse the sort: the quieter pod comes first.
    tmux.keys(&["r"]);
    tmux.wait_for("reversed order", |s| {
        s.contains("(reversed)") && position(s, "backend/quiet-pod") < position(s, "shop/busy-pod")
    });
    // Sort by name (column 1), not reversed: backend/ before shop/.
    tmux.keys(&["r", "1"]);
    tmux.wait_for("sorted by workload", |s| {
        s.contains("sort: WORKLOAD")
            && !s.contains("(reversed)")
            && position(s, "backend/quiet-pod") < position(s, "shop/busy-pod")
    });

    // Filter by namespace, then by pod.
    tmux.keys(&["/", "shop/", "Enter"]);
    tmux.wait_for("only the shop namespace", |s| {
        s.contains("filter: shop/")
            && row(s, "shop/busy-pod").is_some()
            && row(s, "backend/quiet-pod").is_none()
    });
    tmux.keys(&["Escape", "/", "quiet", "Enter"]);
    let screen = tmux.wait_for("only the quiet pod", |s| {
        s.contains("filter: quiet")
            && row(s, "backend/quiet-pod").is_some()
            && row(s, "shop/busy-pod").is_none()
    });
    assert!(
        drop_rate(&screen, "backend/quiet-pod").is_some_and(|r| near(r, quiet.rate())),
        "{screen}"
    );

    // Its detail view: totals since start and the keys to go back.
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the detail view", |s| s.contains("details (Esc: back)"));
    assert!(screen.contains("backend/quiet-pod"), "{screen}");
    assert!(screen.contains(&quiet.pod.pod_path), "{screen}");
    assert!(screen.contains("drops: NO_SOCKET "), "{screen}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("back to the table", |s| {
        row(s, "backend/quiet-pod").is_some()
    });

    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.running() {
        assert!(
            Instant::now() < deadline,
            "q did not quit: {}",
            tmux.screen()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn once_prints_a_plain_table_with_the_pods_rate() {
    let logs = PodLogs::new();
    let busy = DroppingPod::new(&logs, "shop", "plain-pod", 10);
    let out = Command::new(tuneprobe_binary())
        .args(["top", "--once", "--interval", "3s", "--kube-api", "none"])
        .args(["--namespace", "shop", "--pod-logs-dir"])
        .arg(logs.dir.join("pods"))
        .output()
        .expect("run tuneprobe top --once");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ready"));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("tuneprobe top: rates over the last 3."),
        "{text}"
    );
    assert!(lines[1].starts_with("WORKLOAD"), "{text}");
    let cells = row(&text, "shop/plain-pod").unwrap_or_else(|| panic!("no row in\n{text}"));
    assert_eq!(cells[3], "NO_SOCKET");
    let rate: f64 = cells[2].parse().unwrap();
    assert!(near(rate, busy.rate()), "{rate} vs {}", busy.rate());
    // --namespace shop: every row is in it.
    assert!(
        lines[2..]
            .iter()
            .filter(|l| !l.is_empty())
            .all(|l| l.starts_with("shop/")),
        "{text}"
    );
}
