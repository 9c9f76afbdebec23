//! Child processes that end with their owner.

use std::{
    io::Read as _,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::interrupted;

/// Kills a child (SIGKILL) and reaps it; for drops, so errors are ignored.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A named child process (a server, a load generator, an agent) that is stopped
/// (SIGTERM, then SIGKILL after 3 s) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has exited already (and how).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` and waits up to `grace` for the exit, then kills.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child, which is not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits up to `timeout` for the exit and returns what it wrote to its (piped) stdout.
    pub fn wait_output(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let stdout = self.child.as_mut().and_then(|c| c.stdout.take());
        let reader = thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stdout) = stdout {
                let _ = stdout.read_to_string(&mut text);
            }
            text
        });
        let status = self.wait(timeout)?;
        let text = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        ensure!(
            status.success(),
            "{} failed ({status}): {text:.300}",
            self.name
        );
        Ok(text)
    }

    /// Waits for the process to exit by itself, for at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            if interrupted() {
                bail!("interrupted");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM, Duration::from_secs(3));
    }
}
