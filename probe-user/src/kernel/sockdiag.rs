//! Listening TCP sockets and their backlogs through `NETLINK_SOCK_DIAG`, as `ss -lnt`
//! shows them: for a listener, the kernel reports the accept queue's length (`Recv-Q`)
//! and its limit, the backlog fixed when the application called `listen()` (`Send-Q`).
//!
//! The limit is what tells whether a listener picked up a new `net.core.somaxconn`: the
//! kernel caps the backlog at `listen()` time, so a listener that has not listened again
//! since the change still shows the old cap.

use std::{
    fs, io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use serde::Serialize;

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub address: SocketAddr,
    /// The accept queue's limit (`ss`'s Send-Q).
    pub backlog: u32,
    /// Connections waiting to be accepted now (`ss`'s Recv-Q).
    pub queued: u32,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// `struct inet_diag_req_v2` (linux/inet_diag.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagRequest {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_sockid`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` followed by the request.
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    body: InetDiagRequest,
}

/// Every listening TCP socket (IPv4 and IPv6) of the calling thread's network namespace.
pub fn tcp_listeners() -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        out.extend(dump(family as u8)?);
    }
    out.sort_by_key(|l| l.address);
    Ok(out)
}

/// The listeners of the network namespace at `netns` (`/proc/PID/ns/net`, `/run/netns/X`).
pub fn tcp_listeners_in(netns: &Path) -> io::Result<Vec<Listener>> {
    crate::workloads::netns::run_in(netns, tcp_listeners)
}

fn dump(family: u8) -> io::Result<Vec<Listener>> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let request = Request {
        len: size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
        body: InetDiagRequest {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: 1 << TCP_LISTEN,
            ..InetDiagRequest::default()
        },
    };
    // SAFETY: sends the bytes of a repr(C) value that lives across the call.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut listeners = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into a buffer we own, at most its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(listeners);
        }
        match parse_messages(&buffer[..n as usize], &mut listeners)? {
            true => return Ok(listeners),
            false => continue,
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram of netlink messages; `true` once the dump is done. Lengths are
/// checked against the datagram: a short or odd message ends the parse with an error.
fn parse_messages(mut data: &[u8], out: &mut Vec<Listener>) -> io::Result<bool> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    while data.len() >= 16 {
        let len = u32_at(data, 0).ok_or_else(malformed)? as usize;
        let kind = u16_at(data, 4).ok_or_else(malformed)?;
        if len < 16 || len > data.len() {
            return Err(malformed());
        }
        let body = &data[16..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(body, 0).ok_or_else(malformed)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_listener(body).ok_or_else(malformed)?),
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(false)
}

/// `struct inet_diag_msg`: family, state, timer, retrans, the socket id (48 bytes),
/// expires, rqueue, wqueue, uid, inode.
fn parse_listener(body: &[u8]) -> Option<Listener> {
    let family = *body.first()?;
    let port = u16::from_be_bytes(body.get(4..6)?.try_into().ok()?);
    let ip = match family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(body.get(8..12)?).ok()?)),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(body.get(8..24)?).ok()?)),
        _ => return None,
    };
    Some(Listener {
        address: SocketAddr::new(ip, port),
        queued: u32_at(body, 56)?,
        backlog: u32_at(body, 60)?,
    })
}

/// A network namespace's path for one of its processes.
pub fn netns_of_pid(proc_root: &Path, pid: u32) -> std::path::PathBuf {
    proc_root.join(pid.to_string()).join("ns/net")
}

/// The inode of a network namespace file.
pub fn netns_inode(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(path)?.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_listener_with_the_backlog_it_asked_for() {
        // std's TcpListener picks its own backlog: ask for 7 through libc.
        // SAFETY: plain socket calls on a descriptor owned right away.
        let socket =
            unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
        let mut address = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut length = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: the address outlives the calls; lengths match its type.
        unsafe {
            assert_eq!(
                libc::bind(socket.as_raw_fd(), (&raw const address).cast(), length),
                0
            );
            assert_eq!(libc::listen(socket.as_raw_fd(), 7), 0);
            libc::getsockname(
                socket.as_raw_fd(),
                (&raw mut address).cast(),
                &raw mut length,
            );
        }
        let port = u16::from_be(address.sin_port);
        let listeners = tcp_listeners().expect("sock_diag dump");
        let mine = listeners
            .iter()
            .find(|l| l.address == SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .expect("own listener listed");
        assert_eq!((mine.backlog, mine.queued), (7, 0));
    }

    #[test]
    fn rejects_truncated_replies() {
        let mut out = Vec::new();
        // A header that claims more bytes than the datagram has.
        let mut message = vec![0u8; 16];
        message[0..4].copy_from_slice(&200u32.to_ne_bytes());
        message[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse_messages(&message, &mut out).is_err());
        // A message too short to hold an inet_diag_msg.
        message[0..4].copy_from_slice(&20u32.to_ne_bytes());
        message.extend_from_slice(&[libc::AF_INET as u8, 10, 0, 0]);
        assert!(parse_messages(&message, &mut out).is_err());
        assert!(out.is_empty());
        assert!(!parse_messages(&[1, 2, 3], &mut out).unwrap());
    }
}
