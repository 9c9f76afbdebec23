//! The observers under test (nothing, bpftrace, tuneprobe) and what is measured of them:
//! time to attach, CPU time and RSS from /proc, and the kernel's run-time statistics of
//! their programs from the fdinfo of the program fds they hold.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{
    lab::{Proc, read_text, sh},
    pause,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Nothing,
    Bpftrace,
    Tuneprobe,
}

impl Mode {
    pub const ALL: [Self; 3] = [Self::Nothing, Self::Bpftrace, Self::Tuneprobe];

    pub fn name(self) -> &'static str {
        match self {
            Self::Nothing => "nothing",
            Self::Bpftrace => "bpftrace",
            Self::Tuneprobe => "tuneprobe",
        }
    }
}

/// Where the observers come from.
pub struct Tools {
    pub tuneprobe: PathBuf,
    /// The bpftrace equivalents, concatenated into one program.
    pub bpftrace_program: PathBuf,
    /// `SKB_CONSUMED` on this kernel, the drop reason that is no drop.
    pub skb_consumed: u32,
    /// Output files of the runs.
    pub out_dir: PathBuf,
}

/// A running observer.
pub struct Agent {
    pub mode: Mode,
    proc: Proc,
    /// From spawn to `ready`.
    pub attach: Duration,
    /// tuneprobe serve's listen address.
    pub listen: Option<String>,
    output: PathBuf,
}

impl Agent {
    pub fn start(mode: Mode, tools: &Tools, run: usize) -> anyhow::Result<Option<Self>> {
        Self::start_with(mode, tools, run, &tools.bpftrace_program)
    }

    /// Like `start`, with another bpftrace program (it must print `ready` from BEGIN).
    pub fn start_with(
        mode: Mode,
        tools: &Tools,
        run: usize,
        bpftrace_program: &Path,
    ) -> anyhow::Result<Option<Self>> {
        let output = tools.out_dir.join(format!("{}-{run}.out", mode.name()));
        let file = fs::File::create(&output)?;
        let (mut cmd, listen) = match mode {
            Mode::Nothing => return Ok(None),
            Mode::Bpftrace => {
                let mut cmd = Command::new("bpftrace");
                // Line-buffered, so `ready` (printed from BEGIN, after every probe is
                // attached) shows at once.
                cmd.args(["-B", "line"])
                    .arg(bpftrace_program)
                    .arg(tools.skb_consumed.to_string())
                    .stdout(file)
                    .stderr(Stdio::null());
                (cmd, None)
            }
            Mode::Tuneprobe => {
                let listen = free_port()?;
                let mut cmd = Command::new(&tools.tuneprobe);
                cmd.args(["serve", "--kube-api", "none", "--listen", &listen])
                    .stdout(Stdio::null())
                    .stderr(file);
                (cmd, Some(listen))
            }
        };
        let started = Instant::now();
        let mut proc = Proc::spawn(mode.name(), cmd.stdin(Stdio::null()))?;
        let deadline = started + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&output).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("ready")) {
                break;
            }
            if let Some(status) = proc.try_wait() {
                bail!(
                    "{} exited ({status}) before it was ready: {text:.1000}",
                    mode.name()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{} not ready after 60 s",
                mode.name()
            );
            pause(Duration::from_millis(2))?;
        }
        Ok(Some(Self {
            mode,
            attach: started.elapsed(),
            proc,
            listen,
            output,
        }))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the agent; returns what it printed (bpftrace prints its maps on SIGINT).
    /// `None` if it had to be killed: once in a while (1 in ~30 stops here, on a busy
    /// machine) bpftrace 0.17 does not finish its exit after SIGINT. What was measured
    /// of it was measured before; only its printed maps are lost.
    pub fn stop(mut self) -> anyhow::Result<Option<String>> {
        let status = self.proc.stop(libc::SIGINT, Duration::from_secs(30));
        let text = fs::read_to_string(&self.output).unwrap_or_default();
        if self.mode == Mode::Bpftrace && status.is_some_and(|s| s.signal_is(libc::SIGKILL)) {
            eprintln!("xtask bench: bpftrace did not exit within 30 s of SIGINT: killed");
            return Ok(None);
        }
        ensure!(
            status.is_some_and(|s| s.success() || s.signal_is(libc::SIGINT)),
            "{} ended with {status:?}: {text:.1000}",
            self.mode.name()
        );
        Ok(Some(text))
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid())
    }
}

trait SignalIs {
    fn signal_is(&self, signal: i32) -> bool;
}

impl SignalIs for std::process::ExitStatus {
    fn signal_is(&self, signal: i32) -> bool {
        std::os::unix::process::ExitStatusExt::signal(self) == Some(signal)
    }
}

/// A free local TCP port for `serve --listen`.
fn free_port() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = read_text(Path::new(&format!("/proc/{pid}/stat")))?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("/proc/PID/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let status = read_text(Path::new(&format!("/proc/{pid}/status")))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            cpu_s: ticks as f64 / hz,
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        })
    }
}

/// The kernel's run-time statistics are on while this is held (BPF_ENABLE_STATS):
/// released at drop or exit, so `kernel.bpf_stats_enabled` is never written.
pub struct StatsEnabled(#[allow(dead_code, reason = "held for its effect")] OwnedFd);

impl StatsEnabled {
    pub fn new() -> anyhow::Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // union bpf_attr's enable_stats member: one u32 type, padded.
        let attr = [BPF_STATS_RUN_TIME, 0, 0, 0];
        // SAFETY: a valid attr of the documented size for this command.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        ensure!(
            fd >= 0,
            "BPF_ENABLE_STATS: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Run count and run time of one program.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// The programs a process holds fds of, by kernel program name (15 characters at most).
pub fn prog_stats(pid: u32) -> anyhow::Result<BTreeMap<String, ProgStats>> {
    let names = prog_names()?;
    let mut by_id: BTreeMap<u64, ProgStats> = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_prog = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        };
        if let Some(id) = field("prog_id:") {
            by_id.insert(
                id,
                ProgStats {
                    run_cnt: field("run_cnt:").unwrap_or(0),
                    run_time_ns: field("run_time_ns:").unwrap_or(0),
                },
            );
        }
    }
    let mut out = BTreeMap::new();
    for (id, stats) in by_id {
        let name = names.get(&id).cloned().unwrap_or_else(|| format!("id{id}"));
        let slot: &mut ProgStats = out.entry(name).or_default();
        slot.run_cnt += stats.run_cnt;
        slot.run_time_ns += stats.run_time_ns;
    }
    Ok(out)
}

fn prog_names() -> anyhow::Result<BTreeMap<u64, String>> {
    let out = sh(&["bpftool", "prog", "show", "--json"])?;
    let progs: serde_json::Value = serde_json::from_str(&out).context("bpftool prog show")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get("id")?.as_u64()?, p.get("name")?.as_str()?.to_string())))
        .collect())
}

/// GET `path` from `addr`; returns the body and how long the whole exchange took.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}{path}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok((body.to_string(), elapsed))
}
