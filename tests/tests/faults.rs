//! Faults around the agent: bad configuration, and `/metrics` under many clients at once.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tuneprobe_tests::tuneprobe_binary;

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

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain HTTP/1.0 GET on loopback; returns (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
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
        if let Some((200, body)) = get(port, "/metrics") {
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
                    .map(|_| get(port, "/metrics"))
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
    assert_eq!(get(port, "/metrics").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/nope").map(|r| r.0), Some(404));
    drop(serve);
}
