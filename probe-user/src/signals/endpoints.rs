//! Addresses, ports and protocols as the network signals' `trace` events show them.

use std::net::{IpAddr, Ipv6Addr};

use probe_common::trace::Endpoints;

/// `1.2.3.4` for IPv4-mapped addresses, the IPv6 form otherwise.
pub fn address(bytes: [u8; 16]) -> String {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4).to_string(),
        None => IpAddr::V6(v6).to_string(),
    }
}

/// Whether the kernel filled the endpoints in (its layout had the fields).
pub fn known(endpoints: &Endpoints) -> bool {
    endpoints.family != 0
}

/// `addr:port`, `[v6]:port`, the address alone without a port, `?` without either.
pub fn endpoint(address: Option<&String>, port: Option<u16>) -> String {
    match (address, port) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.clone(),
        (None, _) => "?".to_string(),
    }
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        58 => "icmpv6".to_string(),
        other => other.to_string(),
    }
}

/// Nanoseconds as milliseconds.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}
