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
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use tuneprobe_lab::{Proc, sh};

use tuneprobe_lab::pause;

use crate::{setup, workspace_root};

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
#[derive(Clone)]
pub struct Tools {
    pub tuneprobe: PathBuf,
    /// Another build measured beside it in the scale stage (`--baseline`).
    pub baseline: Option<PathBuf>,
    /// More arguments for `tuneprobe serve`.
    pub serve_args: Vec<String>,
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
    /// Where bpftrace's stderr goes (tuneprobe's is `output` itself): quoted whenever
    /// the agent fails, since that is where it says why.
    errors: Option<PathBuf>,
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
        let mut errors = None;
        let (mut cmd, listen) = match mode {
            Mode::Nothing => return Ok(None),
            Mode::Bpftrace => {
                mount_tracefs_if_absent()?;
                let stderr_path = tools.out_dir.join(format!("{}-{run}.err", mode.name()));
                let stderr = fs::File::create(&stderr_path)?;
                errors = Some(stderr_path);
                let mut cmd = Command::new("bpftrace");
                // Line-buffered, so `ready` (printed from BEGIN, after every probe is
                // attached) shows at once.
                cmd.args(["-B", "line"])
                    .arg(bpftrace_program)
                    .arg(tools.skb_consumed.to_string())
                    .stdout(file)
                    .stderr(stderr);
                (cmd, None)
            }
            Mode::Tuneprobe => {
                let listen = free_port()?;
                let mut cmd = Command::new(&tools.tuneprobe);
                cmd.args(["serve", "--kube-api", "none", "--listen", &listen])
                    .args(&tools.serve_args)
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
                    "{} exited ({status}) before it was ready: {}",
                    mode.name(),
                    failure_text(&output, errors.as_deref())
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
            errors,
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
            "{} ended with {status:?}: {}",
            self.mode.name(),
            failure_text(&self.output, self.errors.as_deref())
        );
        Ok(Some(text))
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        Usage::of(self.pid())
    }
}

/// bpftrace reads its tracepoints' formats from tracefs; without it (unmounted at boot
/// on these machines until something mounts it) every tracepoint is "not found" and
/// it exits before BEGIN. That was a fresh machine's first bench run failing while
/// later runs, after tuneprobe (which mounts it) had run, passed.
fn mount_tracefs_if_absent() -> anyhow::Result<()> {
    const TRACING: &str = "/sys/kernel/tracing";
    let mountinfo = read_text(Path::new("/proc/self/mountinfo"))?;
    if tracefs_mounted(&mountinfo) {
        return Ok(());
    }
    let path = std::ffi::CString::new(TRACING)?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            path.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    ensure!(
        rc == 0,
        "tracefs is not mounted and mounting it at {TRACING} failed ({}): bpftrace cannot \
         find tracepoints without it",
        std::io::Error::last_os_error()
    );
    eprintln!("xtask bench: mounted tracefs at {TRACING} (bpftrace needs it)");
    Ok(())
}

/// Whether tracefs is mounted where bpftrace looks: /sys/kernel/tracing, or under
/// debugfs at /sys/kernel/debug/tracing.
fn tracefs_mounted(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        let mount_point = left.split_whitespace().nth(4).unwrap_or_default();
        right.starts_with("tracefs ")
            && matches!(
                mount_point,
                "/sys/kernel/tracing" | "/sys/kernel/debug/tracing"
            )
    })
}

/// What a failed agent printed: its stderr first (bpftrace's reason for exiting is
/// there, its stdout is usually empty then), then its stdout; each cut to its last
/// 2000 bytes, which hold the error.
fn failure_text(output: &Path, errors: Option<&Path>) -> String {
    let tail = |path: &Path| -> String {
        let text = fs::read_to_string(path).unwrap_or_default();
        let text = text.trim();
        let start = text.len().saturating_sub(2000);
        let start = (start..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    };
    let stdout = tail(output);
    let Some(errors) = errors else {
        return if stdout.is_empty() {
            "(it printed nothing)".to_string()
        } else {
            stdout
        };
    };
    let stderr = tail(errors);
    match (stderr.is_empty(), stdout.is_empty()) {
        (true, true) => "(it printed nothing on stdout or stderr)".to_string(),
        (false, true) => format!("stderr: {stderr}"),
        (true, false) => format!("stdout: {stdout}"),
        (false, false) => format!("stderr: {stderr}\nstdout: {stdout}"),
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

/// Reads a whole small file from /proc or /sys.
fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(text)
}

/// What the benchmark and the soak do first: Ctrl-C handling, setup (unless told not
/// to), and the tuneprobe binary to run (the given one, or a fresh release build).
pub fn prepare(no_setup: bool, tuneprobe: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    install_interrupt()?;
    if !no_setup {
        setup::run()?;
    }
    let tuneprobe = match tuneprobe {
        Some(path) => path.clone(),
        None => {
            crate::build::release()?;
            workspace_root().join("target/release/tuneprobe")
        }
    };
    ensure!(
        tuneprobe.exists(),
        "no tuneprobe at {}",
        tuneprobe.display()
    );
    Ok(tuneprobe)
}

/// From now on Ctrl-C and SIGTERM set the flag that [`tuneprobe_lab::interrupted`] reads.
fn install_interrupt() -> anyhow::Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    tuneprobe_lab::stop_waiting_on(flag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_is_found_at_either_place() {
        let debugfs_only = "30 23 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw\n";
        assert!(!tracefs_mounted(debugfs_only));
        assert!(tracefs_mounted(
            "45 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw\n"
        ));
        assert!(tracefs_mounted(&format!(
            "{debugfs_only}31 30 0:13 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n"
        )));
        // A tracefs elsewhere (a container's) is not where bpftrace looks.
        assert!(!tracefs_mounted(
            "45 23 0:13 / /mnt/tracing rw,relatime - tracefs tracefs rw\n"
        ));
    }

    /// The error of an agent that exits early quotes its stderr (bpftrace's reason),
    /// and says so when it printed nothing at all.
    #[test]
    fn failure_text_quotes_stderr() {
        let dir = std::env::temp_dir().join(format!("xtask-agent-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("bpftrace-0.out");
        let err = dir.join("bpftrace-0.err");
        fs::write(&out, "").unwrap();
        fs::write(&err, "").unwrap();
        let silent = failure_text(&out, Some(&err));
        fs::write(
            &err,
            "equivalent.bt:1-4: ERROR: tracepoint not found: skb:kfree_skb\n",
        )
        .unwrap();
        let quoted = failure_text(&out, Some(&err));
        fs::write(&out, "Attaching 9 probes...\n").unwrap();
        fs::write(&err, "x".repeat(5000) + "the reason").unwrap();
        let both = failure_text(&out, Some(&err));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(silent, "(it printed nothing on stdout or stderr)");
        assert_eq!(
            quoted,
            "stderr: equivalent.bt:1-4: ERROR: tracepoint not found: skb:kfree_skb"
        );
        assert!(both.starts_with("stderr: xxx"), "{both:.50}");
        assert!(
            both.ends_with("the reason\nstdout: Attaching 9 probes..."),
            "{both}"
        );
        assert!(both.len() < 2100, "{}", both.len());
    }
}
