//! TCP connections per cgroup of the socket's owner: opens, failed connects by cause,
//! closes, resets, and at close the connection's duration and round-trip times.

use crate::trace::{Endpoints, TraceHeader};

use crate::LatencyHistogram;

/// Per-CPU hash map: [`ConnectionKey`] -> [`ConnectionCounters`].
pub const TCP_CONNECTIONS_MAP: &str = "TCP_CONNECTIONS";
/// Hash map (shared, atomic adds: a few updates per connection) ->
/// [`ConnectionTimes`].
pub const TCP_CONNECTION_TIMES_MAP: &str = "TCP_CONNECTION_TIMES";
/// LRU hash map: socket address -> when its connection began (`bpf_ktime_get_ns`).
pub const TCP_CONNECTION_STARTS_MAP: &str = "TCP_CONNECTION_STARTS";
/// Distinct workloads tracked at once; beyond this, updates are counted as overflow.
pub const TCP_CONNECTIONS_MAX_CGROUPS: u32 = 16_384;
/// Histograms are larger: fewer workloads (those that closed a connection).
pub const TCP_CONNECTION_TIMES_MAX_CGROUPS: u32 = 4_096;
/// Connections in progress whose start is remembered; the oldest are evicted first.
pub const TCP_CONNECTION_STARTS_MAX: u32 = 65_536;

/// Connection durations: two buckets per power of two of microseconds, past 19 hours.
pub const DURATION_BUCKETS: usize = 72;
pub const DURATION_SUB_BITS: u32 = 1;
pub type DurationHistogram = LatencyHistogram<DURATION_BUCKETS, DURATION_SUB_BITS>;

/// `errno` values of a failed connect (`include/uapi/asm-generic/errno.h`, the same on
/// every architecture tuneprobe runs on).
pub const ECONNREFUSED: i32 = 111;
pub const ETIMEDOUT: i32 = 110;
pub const ECONNRESET: i32 = 104;
pub const EADDRNOTAVAIL: i32 = 99;

/// The socket owner's cgroup v2 id and the socket's network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    pub cgroup_id: u64,
    /// Network namespace inode number; 0 if unknown.
    pub netns: u32,
    /// Explicit padding: the kernel hashes every key byte.
    pub _reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionCounters {
    /// `connect()`s that sent a SYN (CLOSE -> SYN_SENT).
    pub active_opens: u64,
    /// Of those, connected (SYN_SENT -> ESTABLISHED).
    pub connected: u64,
    /// Handshakes completed on a listener (SYN_RECV -> ESTABLISHED).
    pub passive_opens: u64,
    /// Connects that failed (SYN_SENT -> CLOSE) by the socket's error: refused (a RST
    /// answered the SYN), timed out (no answer), reset, anything else (closed by the
    /// application before an answer).
    pub refused: u64,
    pub timed_out: u64,
    pub reset: u64,
    pub other_failures: u64,
    /// `connect()` failed with `EADDRNOTAVAIL`: no free local port; no SYN was sent.
    pub port_exhaustion: u64,
    /// Established connections that ended (left ESTABLISHED).
    pub closed: u64,
    /// RSTs sent for the workload's sockets, and received on them.
    pub resets_sent: u64,
    pub resets_received: u64,
}

impl ConnectionCounters {
    pub fn add(&mut self, other: &Self) {
        self.active_opens += other.active_opens;
        self.connected += other.connected;
        self.passive_opens += other.passive_opens;
        self.refused += other.refused;
        self.timed_out += other.timed_out;
        self.reset += other.reset;
        self.other_failures += other.other_failures;
        self.port_exhaustion += other.port_exhaustion;
        self.closed += other.closed;
        self.resets_sent += other.resets_sent;
        self.resets_received += other.resets_received;
    }

    /// What happened since `earlier` (never negative).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            active_opens: self.active_opens.saturating_sub(earlier.active_opens),
            connected: self.connected.saturating_sub(earlier.connected),
            passive_opens: self.passive_opens.saturating_sub(earlier.passive_opens),
            refused: self.refused.saturating_sub(earlier.refused),
            timed_out: self.timed_out.saturating_sub(earlier.timed_out),
            reset: self.reset.saturating_sub(earlier.reset),
            other_failures: self.other_failures.saturating_sub(earlier.other_failures),
            port_exhaustion: self.port_exhaustion.saturating_sub(earlier.port_exhaustion),
            closed: self.closed.saturating_sub(earlier.closed),
            resets_sent: self.resets_sent.saturating_sub(earlier.resets_sent),
            resets_received: self.resets_received.saturating_sub(earlier.resets_received),
        }
    }

    /// Connects that failed, whatever the cause (`TcpAttemptFails` on the client side).
    pub fn failed(&self) -> u64 {
        self.refused + self.timed_out + self.reset + self.other_failures
    }
}

/// Per workload, at each close of an established connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionTimes {
    /// From `connect()` (or the SYN's arrival) to the close.
    pub duration: DurationHistogram,
    /// The smoothed round-trip time at close (`tcp_sock.srtt_us`).
    pub srtt: LatencyHistogram,
    /// The lowest round-trip time seen over the connection (`tcp_sock.rtt_min`).
    pub min_rtt: LatencyHistogram,
}

crate::kernel_layout! {
    /// What the connection programs read of a TCP socket when its state changes.
    /// Byte offsets and flags from the running kernel's BTF, in the read-only global
    /// `CONNECTION_LAYOUT`.
    pub struct ConnectionLayout in "CONNECTION_LAYOUT" {
        /// `sock.sk_protocol` (a `u16` since 5.6)
        sock_protocol,
        /// `sock.sk_err`: why a connect failed.
        sock_err,
        /// `tcp_sock.srtt_us` (smoothed RTT in µs, shifted left by 3)
        tcp_srtt_us,
        /// `tcp_sock.rtt_min` + `minmax_sample.v`: the windowed minimum's best sample (µs).
        tcp_min_rtt_us,
        /// `tcp_sock.segs_out`: 0 while not even a SYN went out.
        tcp_segs_out,
    }
}

/// The end of a connection: a failed connect, or an established connection closing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionEvent {
    pub header: TraceHeader,
    pub endpoints: Endpoints,
    /// The state it left (`SYN_SENT` for a failed connect, `ESTABLISHED` for a close).
    pub old_state: u32,
    pub new_state: u32,
    /// The socket's error (`sk_err`, an errno; 0 for none).
    pub error: u32,
    /// 1 if it was opened by `connect()`, 0 if accepted on a listener.
    pub active: u32,
    /// Since `connect()` or the SYN's arrival; 0 if the start was not seen.
    pub duration_us: u64,
    /// Smoothed and minimum round-trip times at close; 0 for a failed connect.
    pub srtt_us: u32,
    pub min_rtt_us: u32,
}

user_pod!(
    ConnectionEvent,
    ConnectionCounters,
    ConnectionKey,
    ConnectionTimes
);
