//! TCP connections per cgroup of the socket's owner, from the socket state-change
//! tracepoint (a few events per connection, none per packet) and the reset tracepoints.
//!
//! A connect that finds no free local port never sends a SYN, but the kernel still moves
//! the socket CLOSE -> SYN_SENT -> CLOSE inside `connect()`: a SYN_SENT -> CLOSE of a
//! socket that sent no segment (`tcp_sock.segs_out == 0`) is port exhaustion
//! (`EADDRNOTAVAIL`), with no syscall hook. (The local port cannot tell: the kernel
//! releases it before the state changes, for every failed connect.)

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use probe_common::{
    ConnectionCounters, ConnectionKey, ConnectionTimes, LatencyHistogram, OverflowSlot,
    tcp_connections::ConnectionEvent,
    tcp_connections::{
        DurationHistogram, ECONNREFUSED, ECONNRESET, ETIMEDOUT, TCP_CONNECTION_STARTS_MAX,
        TCP_CONNECTION_TIMES_MAX_CGROUPS, TCP_CONNECTIONS_MAX_CGROUPS,
    },
    trace::TraceKind,
};

use crate::{
    aggregate,
    kernel::{self, layout},
    trace,
};

/// This signal's layout, as the loader resolved it from BTF (see `kernel::layout!`).
#[unsafe(no_mangle)]
pub(crate) static CONNECTION_LAYOUT: aya_ebpf::Global<
    probe_common::tcp_connections::ConnectionLayout,
> = aya_ebpf::Global::new(probe_common::tcp_connections::ConnectionLayout::UNRESOLVED);

// `include/net/tcp_states.h` (user ABI).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

/// `probe_common::tcp_connections::TCP_CONNECTIONS_MAP`.
#[map]
static TCP_CONNECTIONS: PerCpuHashMap<ConnectionKey, ConnectionCounters> =
    PerCpuHashMap::with_max_entries(TCP_CONNECTIONS_MAX_CGROUPS, 0);

/// `probe_common::tcp_connections::TCP_CONNECTION_TIMES_MAP`.
#[map]
static TCP_CONNECTION_TIMES: HashMap<ConnectionKey, ConnectionTimes> =
    HashMap::with_max_entries(TCP_CONNECTION_TIMES_MAX_CGROUPS, 0);

/// Socket address -> start of its connection (ns) with 1 in the low bit for `connect()`.
#[map]
static TCP_CONNECTION_STARTS: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(TCP_CONNECTION_STARTS_MAX, 0);

static ZERO_TIMES: ConnectionTimes = ConnectionTimes {
    duration: DurationHistogram::ZERO,
    srtt: LatencyHistogram::ZERO,
    min_rtt: LatencyHistogram::ZERO,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if !sk.is_null()
        && kernel::load::<u16>(sk, layout!(CONNECTION_LAYOUT, sock_protocol)) == IPPROTO_TCP
    {
        state_change(sk, old, new);
    }
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    // A reset for a packet with no socket has no owner here (it is a drop's business).
    let sk: *const u8 = ctx.arg(0);
    if !sk.is_null() {
        count(sk, |c| c.resets_sent += 1);
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !sk.is_null() {
        count(sk, |c| c.resets_received += 1);
    }
    0
}

#[inline(always)]
fn key_of(sk: *const u8) -> ConnectionKey {
    ConnectionKey {
        cgroup_id: kernel::sock_cgroup_id(sk),
        netns: kernel::sock_netns(sk),
        _reserved: 0,
    }
}

#[inline(always)]
fn count(sk: *const u8, update: impl Fn(&mut ConnectionCounters)) {
    let mut initial = ConnectionCounters::default();
    update(&mut initial);
    aggregate::add(
        &TCP_CONNECTIONS,
        &key_of(sk),
        &initial,
        OverflowSlot::TcpConnections,
        update,
    );
}

#[inline(always)]
fn state_change(sk: *const u8, old: i32, new: i32) {
    let id = sk as u64;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => {
            count(sk, |c| c.active_opens += 1);
            let _ = TCP_CONNECTION_STARTS.insert(id, now | 1, 0);
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => count(sk, |c| c.connected += 1),
        (_, TCP_SYN_RECV) => {
            let _ = TCP_CONNECTION_STARTS.insert(id, now & !1, 0);
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => count(sk, |c| c.passive_opens += 1),
        (TCP_SYN_SENT, TCP_CLOSE) => {
            // Beyond `struct sock`: copied with the helper (see `closed`).
            let sent =
                kernel::read::<u32>(sk, layout!(CONNECTION_LAYOUT, tcp_segs_out)).unwrap_or(1);
            let error: i32 = kernel::load(sk, layout!(CONNECTION_LAYOUT, sock_err));
            match (sent, error) {
                (0, _) => count(sk, |c| c.port_exhaustion += 1),
                (_, ECONNREFUSED) => count(sk, |c| c.refused += 1),
                (_, ETIMEDOUT) => count(sk, |c| c.timed_out += 1),
                (_, ECONNRESET) => count(sk, |c| c.reset += 1),
                _ => count(sk, |c| c.other_failures += 1),
            }
            let start = take_start(id);
            if sent != 0 {
                emit(sk, old, new, error, start, now, 0, 0);
            }
        }
        (TCP_ESTABLISHED, _) => closed(sk, old, new, id, now),
        (_, TCP_CLOSE) => {
            // Ends that did not pass through ESTABLISHED's exit here (a SYN_RECV child
            // reset before it was accepted): forget the start.
            let _ = TCP_CONNECTION_STARTS.remove(id);
        }
        _ => {}
    }
}

/// The start of `id`'s connection (0 if unseen), forgotten.
#[inline(always)]
fn take_start(id: u64) -> u64 {
    // SAFETY: a map value read, copied out at once.
    let start = unsafe { TCP_CONNECTION_STARTS.get(id).copied() }.unwrap_or(0);
    let _ = TCP_CONNECTION_STARTS.remove(id);
    start
}

/// An established connection ends: its duration and round-trip times.
#[inline(always)]
fn closed(sk: *const u8, old: i32, new: i32, id: u64, now: u64) {
    count(sk, |c| c.closed += 1);
    let start = take_start(id);
    // `tcp_sock` extends `sock`: the verifier types `sk` as a `struct sock`, so these
    // fields beyond it are copied with the helper (once per connection).
    let srtt_us =
        kernel::read::<u32>(sk, layout!(CONNECTION_LAYOUT, tcp_srtt_us)).unwrap_or(0) >> 3;
    let min_rtt_us =
        kernel::read::<u32>(sk, layout!(CONNECTION_LAYOUT, tcp_min_rtt_us)).unwrap_or(0);
    let key = key_of(sk);
    if let Some(times) = aggregate::shared_entry(
        &TCP_CONNECTION_TIMES,
        &key,
        &ZERO_TIMES,
        OverflowSlot::TcpConnectionTimes,
    ) {
        // SAFETY: map value pointer.
        unsafe {
            if start != 0 {
                aggregate::record(&raw mut (*times).duration, now.saturating_sub(start & !1));
            }
            if srtt_us != 0 {
                aggregate::record(&raw mut (*times).srtt, u64::from(srtt_us) * 1000);
            }
            // `~0U` is the minimum's "no sample yet".
            if min_rtt_us != 0 && min_rtt_us != u32::MAX {
                aggregate::record(&raw mut (*times).min_rtt, u64::from(min_rtt_us) * 1000);
            }
        }
    }
    emit(sk, old, new, 0, start, now, srtt_us, min_rtt_us);
}

#[expect(clippy::too_many_arguments, reason = "one record's fields")]
#[inline(always)]
fn emit(
    sk: *const u8,
    old: i32,
    new: i32,
    error: i32,
    start: u64,
    now: u64,
    srtt_us: u32,
    min_rtt_us: u32,
) {
    if !trace::enabled(TraceKind::Connection) {
        return;
    }
    let key = key_of(sk);
    let event = ConnectionEvent {
        header: trace::header(TraceKind::Connection, key.cgroup_id, key.netns, now),
        endpoints: trace::sock_endpoints(sk, 6),
        old_state: old as u32,
        new_state: new as u32,
        error: error as u32,
        active: (start & 1) as u32,
        duration_us: if start == 0 {
            0
        } else {
            now.saturating_sub(start & !1) / 1000
        },
        srtt_us,
        min_rtt_us: if min_rtt_us == u32::MAX {
            0
        } else {
            min_rtt_us
        },
    };
    trace::emit(TraceKind::Connection, &event);
}
