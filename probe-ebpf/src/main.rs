//! tuneprobe's kernel programs: one module per signal, each a thin entry point over a
//! fallible body. Counts are aggregated here, in maps keyed by cgroup; nothing is sent
//! to userspace per event, except while `tuneprobe trace` runs (see `trace`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds into shared map values (see `aggregate::atomic_add`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "atomic_xadd"))]

#[cfg(target_arch = "bpf")]
mod aggregate;
#[cfg(target_arch = "bpf")]
mod block_io;
#[cfg(target_arch = "bpf")]
mod cpu_throttle;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod tcp_connections;
#[cfg(target_arch = "bpf")]
mod tcp_retransmit;
#[cfg(target_arch = "bpf")]
mod trace;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies rustc.
    loop {}
}

// The probe-read helpers are GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
