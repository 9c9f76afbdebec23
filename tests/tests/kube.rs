//! The pod watcher against a local server that speaks the Kubernetes list and watch
//! protocol (there is no API server on these machines): add, modify, delete, a dropped
//! watch that is resumed from the last resource version, and a 410 Gone that forces a
//! fresh list.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use tuneprobe::workloads::kube::{ApiConfig, PodStore, PodWatcher};

const NODE: &str = "node-7";
const TOKEN: &str = "s3cret-token";

fn pod(uid: &str, name: &str, version: &str, app: &str) -> serde_json::Value {
    json!({
        "metadata": {"uid": uid, "namespace": "shop", "name": name, "resourceVersion": version,
                     "labels": {"app": app}},
        "status": {"containerStatuses": [
            {"name": "server", "containerID": format!("containerd://{}", uid.repeat(64).get(..64).unwrap_or_default())}
        ]}
    })
}

fn event(kind: &str, object: serde_json::Value) -> String {
    json!({"type": kind, "object": object}).to_string() + "\n"
}

/// What the fake API server saw: one request line per connection.
type Seen = Arc<Mutex<Vec<String>>>;

/// Reads the request head; returns the request line and whether the token was right.
fn read_request(stream: &TcpStream) -> (String, bool) {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    let _ = reader.read_line(&mut first);
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("authorization:") && line.contains(TOKEN) {
            authorized = true;
        }
    }
    (first.trim().to_string(), authorized)
}

fn respond(mut stream: &TcpStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
    );
    let _ = stream.flush();
}

/// A scripted API server: each connection gets the next step of the script.
fn serve(listener: TcpListener, seen: Seen) {
    let mut step = 0;
    for stream in listener.incoming().flatten() {
        let (request, authorized) = read_request(&stream);
        seen.lock().unwrap().push(request.clone());
        if !authorized {
            respond(&stream, "401 Unauthorized", "{}");
            continue;
        }
        let filtered = request.contains("fieldSelector=spec.nodeName%3Dnode-7");
        assert!(filtered, "not filtered by node: {request}");
        let watching = request.contains("watch=1");
        match (step, watching) {
            // 1. List: pod a.
            (0, false) => respond(
                &stream,
                "200 OK",
                &json!({"metadata": {"resourceVersion": "10"}, "items": [pod("a", "api-a", "9", "v1")]}).to_string(),
            ),
            // 2. Watch from 10: b added, a modified; then the connection drops.
            (1, true) => {
                let body = event("ADDED", pod("b", "api-b", "11", "v1"))
                    + &event("MODIFIED", pod("a", "api-a", "12", "v2"));
                respond(&stream, "200 OK", &body);
            }
            // 3. Resumed from 12: b deleted; then 410 Gone.
            (2, true) => {
                let body = event("DELETED", pod("b", "api-b", "13", "v1"))
                    + &event("ERROR", json!({"kind": "Status", "code": 410, "reason": "Expired"}));
                respond(&stream, "200 OK", &body);
            }
            // 4. Relist: a and c.
            (3, false) => respond(
                &stream,
                "200 OK",
                &json!({"metadata": {"resourceVersion": "20"},
                        "items": [pod("a", "api-a", "12", "v2"), pod("c", "api-c", "19", "v1")]})
                .to_string(),
            ),
            // 5. Watch from 20 with a garbage line and a bookmark; then hold the stream.
            (4, true) => {
                let mut stream = &stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\nnot json at all\n{}",
                    event("BOOKMARK", json!({"metadata": {"resourceVersion": "21"}}))
                );
                let _ = stream.flush();
                thread::sleep(Duration::from_secs(30));
            }
            (other, watching) => {
                respond(&stream, "500 Internal Server Error", "{}");
                panic!("unexpected request at step {other} (watch: {watching}): {request}");
            }
        }
        step += 1;
    }
}

fn wait_for(store: &Mutex<PodStore>, what: &str, done: impl Fn(&PodStore) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done(&store.lock().unwrap()) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}: {:?}", store.lock().unwrap());
}

#[test]
fn list_watch_resume_and_relist() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let server_seen = Arc::clone(&seen);
    thread::spawn(move || serve(listener, server_seen));

    let token = std::env::temp_dir().join(tuneprobe_tests::unique("tuneprobe-token-"));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = ApiConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        token_file: Some(token.clone()),
        ..ApiConfig::default()
    };
    // No grace: deleted pods disappear at the next watch start.
    let watcher = PodWatcher::start(config, NODE.into(), Duration::ZERO).unwrap();
    let store = watcher.store();

    wait_for(&store, "the relist", |s| {
        s.lists >= 2 && s.pod("c").is_some()
    });
    wait_for(&store, "b to be forgotten", |s| s.pod("b").is_none());
    let s = store.lock().unwrap();
    let a = s.pod("a").expect("a is still there");
    assert_eq!((a.namespace.as_str(), a.name.as_str()), ("shop", "api-a"));
    assert_eq!(a.labels["app"], "v2", "the MODIFIED event was applied");
    assert_eq!(
        s.container(&"c".repeat(64))
            .map(|(p, n)| (p.name.as_str(), n)),
        Some(("api-c", "server"))
    );
    assert!(s.resumes >= 1);
    assert_eq!(s.len(), 2);
    drop(s);

    // The store shows the relist before the watcher has opened the watch that follows it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 5 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.len() >= 5,
        "the watch after the relist never came: {requests:?}"
    );
    assert!(requests[0].starts_with("GET /api/v1/pods?") && !requests[0].contains("watch=1"));
    assert!(
        requests[1].contains("watch=1") && requests[1].contains("resourceVersion=10"),
        "{requests:?}"
    );
    // The dropped watch resumed from the last version it saw, not from the list's.
    assert!(
        requests[2].contains("watch=1") && requests[2].contains("resourceVersion=12"),
        "{requests:?}"
    );
    // 410 Gone: a fresh list, then a watch from its version.
    assert!(!requests[3].contains("watch=1"), "{requests:?}");
    assert!(requests[4].contains("resourceVersion=20"), "{requests:?}");
    let _ = std::fs::remove_file(token);
}
