//! The loads: UDP into a dropping port, DNS queries and TCP connections from threads
//! that entered namespace A (a network namespace is per thread), iperf3 and fio as
//! child processes.

use std::{
    fs,
    io::Read as _,
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use tuneprobe_lab::{Proc, sh};

use tuneprobe_lab::spawn_in_netns;

use super::lab::{ADDR_A, ADDR_B, CONNECT_PORT, DROP_PORT, EGRESS_DROP_PORT, Lab, dns_query};

/// Sends UDP datagrams from namespace A to B's dropping port for `secs`, at `rate`
/// packets per second or as fast as one thread can; returns the packets sent.
pub fn udp_flood(
    lab: &Lab,
    secs: f64,
    rate: Option<f64>,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<u64>>> {
    spawn_in_netns(&lab.net.a, move || {
        let socket = UdpSocket::bind((ADDR_A, 0))?;
        socket.connect((ADDR_B, DROP_PORT))?;
        let payload = [0u8; 64];
        paced(secs, rate, || {
            socket.send(&payload)?;
            Ok(true)
        })
    })
}

/// DNS queries from namespace A to dnsmasq in B for `secs` on `threads` sockets;
/// returns the responses received. Paced (`rate` queries per second in total): one query
/// in flight per socket. Unpaced: `WINDOW` in flight per socket, so the rate measures
/// how fast queries are carried and answered, not how fast threads wake up.
pub fn dns_load(
    lab: &Lab,
    secs: f64,
    threads: usize,
    rate: Option<f64>,
) -> anyhow::Result<Vec<thread::JoinHandle<anyhow::Result<u64>>>> {
    const WINDOW: u16 = 16;
    (0..threads)
        .map(|t| {
            spawn_in_netns(&lab.net.a, move || {
                let socket = UdpSocket::bind((ADDR_A, 0))?;
                socket.connect((ADDR_B, 53))?;
                socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut txid = (t as u16) << 12;
                let mut buf = [0u8; 512];
                if rate.is_none() {
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    let mut answers = 0;
                    let mut in_flight = 0;
                    while Instant::now() < end && !tuneprobe_lab::interrupted() {
                        while in_flight < WINDOW {
                            txid = txid.wrapping_add(1);
                            socket.send(&dns_query(txid))?;
                            in_flight += 1;
                        }
                        match socket.recv(&mut buf) {
                            Ok(_) => {
                                answers += 1;
                                in_flight -= 1;
                            }
                            // Lost answers: refill the window.
                            Err(_) => in_flight = 0,
                        }
                    }
                    return Ok(answers);
                }
                paced(secs, rate.map(|r| r / threads as f64), || {
                    txid = txid.wrapping_add(1);
                    socket.send(&dns_query(txid))?;
                    // A lost answer is a timeout, not an error: count only answers.
                    loop {
                        match socket.recv(&mut buf) {
                            Ok(n) if n >= 2 && buf[..2] == txid.to_be_bytes() => {
                                return Ok(true);
                            }
                            Ok(_) => continue,
                            Err(_) => return Ok(false),
                        }
                    }
                })
            })
        })
        .collect()
}

/// TCP connections from namespace A to a server in B for `secs`, at `rate` per second
/// or as fast as one thread can; returns the connections made. The server closes first
/// (its side waits in TIME_WAIT, so the client's ports never run out); every other
/// connection the client resets instead (`SO_LINGER` 0), so resets are sent and
/// received too.
pub fn connect_load(
    lab: &Lab,
    secs: f64,
    rate: Option<f64>,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<u64>>> {
    let server = spawn_in_netns(&lab.net.b, move || {
        let listener = TcpListener::bind((ADDR_B, CONNECT_PORT))?;
        listener.set_nonblocking(true)?;
        let end = Instant::now() + Duration::from_secs_f64(secs + 2.0);
        while Instant::now() < end && !tuneprobe_lab::interrupted() {
            match listener.accept() {
                Ok((stream, _)) => drop(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })?;
    // The listener first: a connect before it would be refused.
    thread::sleep(Duration::from_millis(100));
    spawn_in_netns(&lab.net.a, move || {
        let mut n = 0u64;
        let made = paced(secs, rate, || {
            let Ok(mut stream) = TcpStream::connect((ADDR_B, CONNECT_PORT)) else {
                return Ok(false);
            };
            n += 1;
            if n.is_multiple_of(2) {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and option value; a failure only means a FIN.
                unsafe {
                    libc::setsockopt(
                        stream.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        size_of::<libc::linger>() as u32,
                    )
                };
            } else {
                // The server's FIN: it closed first.
                let _ = stream.read(&mut [0u8; 1]);
            }
            Ok(true)
        })?;
        server
            .join()
            .map_err(|_| anyhow::anyhow!("connection server panicked"))??;
        Ok(made)
    })
}

/// Calls `step` until `secs` have passed, no faster than `rate` per second if given;
/// returns how many steps succeeded.
fn paced(
    secs: f64,
    rate: Option<f64>,
    mut step: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut done = 0u64;
    let mut attempts = 0u64;
    loop {
        let now = Instant::now();
        if now >= end || tuneprobe_lab::interrupted() {
            return Ok(done);
        }
        if let Some(rate) = rate {
            // Batches of up to 1 ms of work between sleeps keep pacing cheap.
            let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
            if attempts >= due {
                let next = start + Duration::from_secs_f64((attempts + 1) as f64 / rate);
                thread::sleep(
                    next.saturating_duration_since(now)
                        .min(Duration::from_millis(1)),
                );
                continue;
            }
        }
        attempts += 1;
        if step()? {
            done += 1;
        }
    }
}

/// iperf3 from A to B's server on `port` for `secs`; returns received bits per second.
pub fn iperf3(lab: &Lab, port: u16, secs: u32, bitrate: Option<&str>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.net.a, "iperf3", "-c", ADDR_B, "-J"])
        .args(["-p", &port.to_string(), "-t", &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(rate) = bitrate {
        cmd.args(["-b", rate]);
    }
    Proc::spawn("iperf3 client", &mut cmd)
}

/// Reads an iperf3 client's JSON and returns its received bits per second.
pub fn iperf3_result(proc: &mut Proc, timeout: Duration) -> anyhow::Result<f64> {
    let out = proc.wait_output(timeout)?;
    let json: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    if let Some(error) = json.get("error") {
        anyhow::bail!("iperf3: {error}");
    }
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .with_context(|| format!("no throughput in iperf3's output: {out:.300}"))
}

/// fio reading 4 KiB blocks at random with direct IO from `device` for `secs`.
pub fn fio(device: &str, secs: u32, rate_iops: Option<u32>) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        &format!("--filename={device}"),
        "--rw=randread",
        "--bs=4k",
        "--direct=1",
        "--time_based",
        &format!("--runtime={secs}"),
        "--output-format=json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    match rate_iops {
        // A fixed rate needs requests in flight to absorb the odd slow one.
        Some(iops) => cmd.args([
            "--ioengine=libaio",
            "--iodepth=4",
            &format!("--rate_iops={iops}"),
        ]),
        // Unpaced: enough requests in flight that the rate measures how fast requests are
        // carried, not how fast fio wakes up on a shared machine.
        None => cmd.args(["--ioengine=libaio", "--iodepth=16"]),
    };
    Proc::spawn("fio", &mut cmd)
}

/// Reads fio's JSON and returns the read IOPS.
pub fn fio_result(proc: &mut Proc, timeout: Duration) -> anyhow::Result<f64> {
    let out = proc.wait_output(timeout)?;
    let json: Value = serde_json::from_str(&out).context("fio JSON")?;
    json.pointer("/jobs/0/read/iops")
        .and_then(Value::as_f64)
        .with_context(|| format!("no IOPS in fio's output: {out:.300}"))
}

/// A busy loop in the throttled cpu cgroup.
pub fn busy_loop(cgroup: &Path) -> anyhow::Result<Proc> {
    let procs = cgroup.join("cgroup.procs");
    // The shell moves itself into the cgroup before it starts spinning.
    Proc::spawn(
        "busy loop",
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && while :; do :; done",
                procs.display()
            ))
            .stdout(Stdio::null()),
    )
}

/// The scale stage's worker (run as `xtask bench --fill-cgroups DIR --fill-netns NS`, it
/// enters namespace A): moves itself through every cgroup under `parent` and sends one datagram from
/// each to the port A drops on output, so each cgroup becomes a workload with a drop.
pub fn fill_cgroups(parent: &Path, netns: &str) -> anyhow::Result<()> {
    tuneprobe_lab::enter_netns(netns)?;
    let mut dirs: Vec<_> = fs::read_dir(parent)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let home = fs::read_to_string("/proc/self/cgroup")?
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| Path::new("/sys/fs/cgroup/unified").join(p.trim_start_matches('/')))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    for dir in &dirs {
        // "0" moves the writing process.
        fs::write(dir.join("cgroup.procs"), "0")
            .with_context(|| format!("entering {}", dir.display()))?;
        // The socket belongs to the cgroup it was created in.
        let socket = UdpSocket::bind((ADDR_A, 0))?;
        socket.send_to(b"w", (ADDR_B, EGRESS_DROP_PORT)).ok();
    }
    fs::write(home.join("cgroup.procs"), "0").context("leaving the scale cgroups")?;
    println!("{}", dirs.len());
    Ok(())
}

/// Runs the fill worker in namespace A and waits for it.
pub fn run_fill(lab: &Lab, parent: &Path) -> anyhow::Result<u64> {
    // Not current_exe(): a rebuild during the run deletes that path; this still runs
    // the binary that is running.
    let out = sh(&[
        "/proc/self/exe",
        "bench",
        "--fill-cgroups",
        parent.to_str().unwrap_or_default(),
        "--fill-netns",
        &lab.net.a,
    ])?;
    out.trim()
        .parse()
        .with_context(|| format!("fill worker printed {out:?}"))
}
