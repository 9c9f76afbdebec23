//! Deterministic traffic for the integration tests, run inside a test's namespace and
//! cgroup. Servers print `ready` once listening; clients exit when done.
//!
//! testload tcp-sink ADDR:PORT                 accept and discard until each peer closes
//! testload tcp-send ADDR:PORT BYTES           send BYTES, wait until the peer has all of it
//! testload udp-send ADDR:PORT COUNT SIZE      send COUNT datagrams of SIZE bytes
//! testload udp-sink ADDR:PORT RCVBUF          bind with SO_RCVBUF=RCVBUF, never read
//! testload udp-pace ADDR:PORT PER_SECOND      one small datagram every 1/PER_SECOND s,
//!                                             forever (a flood of a known rate)
//! testload tcp-listen ADDR:PORT BACKLOG       listen with BACKLOG, never accept
//! testload tcp-connect-burst ADDR:PORT COUNT MS   start COUNT connects, exit after MS
//! testload busy MS                            spin on the CPU for MS milliseconds
//! testload tcp-slow-accept ADDR:PORT BACKLOG DRAIN_MS RELISTEN_MS
//!                                             accept whatever waits every DRAIN_MS; call
//!                                             listen(BACKLOG) again every RELISTEN_MS (0: never)
//! testload tcp-connect-bursts ADDR:PORT COUNT EVERY_MS
//!                                             COUNT non-blocking connects every EVERY_MS, forever
//! testload tcp-flow ADDR:PORT CHUNK EVERY_MS  send CHUNK bytes every EVERY_MS on one
//!                                             connection, forever
//! testload dns-server ADDR:PORT DELAY_MS RCODE|never
//!                                             answer DNS over UDP and TCP after DELAY_MS;
//!                                             SIGUSR1 removes the delay
//! testload dns-query ADDR:PORT NAME COUNT udp|tcp TIMEOUT_MS
//!                                             COUNT sequential queries; prints
//!                                             `answered N median_ms M min_ms F` (as the client saw it)
//! testload dns-garbage ADDR:PORT COUNT        COUNT random-byte and COUNT truncated datagrams
//! testload tcp-connects ADDR:PORT COUNT HOLD  COUNT sequential blocking connects; HOLD=1
//!                                             keeps the connected ones open to the end;
//!                                             prints `connected C refused R noport P other O`
//! testload tcp-connect-loop ADDR:PORT EVERY_MS one connect every EVERY_MS, closed at once
//!                                             (whatever the outcome), forever
//! testload tcp-hold-loop ADDR:PORT EVERY_MS    one connect every EVERY_MS, each kept open
//!                                             forever (no TIME_WAIT: the ports stay held)
//! testload tcp-send-loop ADDR:PORT BYTES EVERY_MS
//!                                             tcp-send BYTES on a new connection every
//!                                             EVERY_MS, forever
//! testload delay-bridge IF_A IF_B MS         forward every frame between two interfaces,
//!                                             each after MS milliseconds (a link with a
//!                                             known delay, where netem is absent)
//! testload read-fsync PATH EVERY_MS           read PATH's first 4 KiB with O_DIRECT, then
//!                                             fsync it (writing what the read changed in
//!                                             its inode: atime), every EVERY_MS, forever
//! testload tcp-reset-server ADDR:PORT         accept, then reset each connection (SO_LINGER 0)
//! testload pause                              sleep until killed

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map_or_else(
            || {
                eprintln!("testload: missing argument {i} in {args:?}");
                std::process::exit(2)
            },
            String::as_str,
        )
    };
    let addr = || -> SocketAddr { arg(1).parse().expect("ADDR:PORT") };
    let num = |i: usize| -> usize { arg(i).parse().expect("number") };
    match arg(0) {
        "tcp-sink" => tcp_sink(addr()),
        "tcp-send" => tcp_send(addr(), num(2)),
        "udp-send" => udp_send(addr(), num(2), num(3)),
        "udp-sink" => udp_sink(addr(), num(2)),
        "udp-pace" => udp_pace(addr(), num(2) as u64),
        "udp-spray" => udp_spray(num(1) as u64),
        "tcp-listen" => tcp_listen(addr(), num(2) as i32),
        "tcp-connect-burst" => tcp_connect_burst(addr(), num(2), num(3) as u64),
        "tcp-slow-accept" => tcp_slow_accept(addr(), num(2) as i32, num(3) as u64, num(4) as u64),
        "tcp-connect-bursts" => loop {
            tcp_connect_burst(addr(), num(2), num(3) as u64);
        },
        "tcp-flow" => tcp_flow(addr(), num(2), num(3) as u64),
        "busy" => busy(Duration::from_millis(num(1) as u64)),
        "dns-server" => dns::server(addr(), Duration::from_millis(num(2) as u64), arg(3)),
        "dns-query" => dns::query(
            addr(),
            arg(2),
            num(3),
            arg(4) == "tcp",
            Duration::from_millis(num(5) as u64),
        ),
        "dns-garbage" => dns::garbage(addr(), num(2)),
        "tcp-connects" => tcp_connects(addr(), num(2), num(3) == 1),
        "tcp-reset-server" => tcp_reset_server(addr()),
        "read-fsync" => read_fsync(arg(1), Duration::from_millis(num(2) as u64)),
        "delay-bridge" => delay_bridge::run(arg(1), arg(2), Duration::from_millis(num(3) as u64)),
        "tcp-send-loop" => loop {
            tcp_send(addr(), num(2));
            thread::sleep(Duration::from_millis(num(3) as u64));
        },
        "tcp-connect-loop" => loop {
            let _ = TcpStream::connect_timeout(&addr(), Duration::from_secs(1));
            thread::sleep(Duration::from_millis(num(2) as u64));
        },
        "tcp-hold-loop" => {
            let mut held = Vec::new();
            loop {
                if let Ok(stream) = TcpStream::connect_timeout(&addr(), Duration::from_secs(1)) {
                    held.push(stream);
                }
                thread::sleep(Duration::from_millis(num(2) as u64));
            }
        }
        "pause" => pause(),
        other => {
            eprintln!("testload: unknown mode {other}");
            std::process::exit(2)
        }
    }
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().expect("stdout");
}

fn pause() -> ! {
    ready();
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn busy(duration: Duration) {
    let start = std::time::Instant::now();
    let mut spins = 0u64;
    while start.elapsed() < duration {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}

fn tcp_sink(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind");
    ready();
    for stream in listener.incoming() {
        let mut stream = stream.expect("accept");
        thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
    }
}

fn tcp_send(addr: SocketAddr, bytes: usize) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("send");
        left -= n;
    }
    // The peer reads until our FIN and then closes: once we see its EOF, every byte,
    // retransmissions included, has been delivered.
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

fn udp_send(addr: SocketAddr, count: usize, size: usize) {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let payload = vec![0xa5u8; size];
    let mut sent = 0;
    for _ in 0..count {
        // Unconnected: an ICMP error for an earlier datagram must not fail later sends.
        if socket.send_to(&payload, addr).is_ok() {
            sent += 1;
        }
    }
    println!("sent {sent}");
}

fn udp_pace(addr: SocketAddr, per_second: u64) -> ! {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let every = Duration::from_nanos(1_000_000_000 / per_second.max(1));
    ready();
    // Paced against the clock, not by sleeps alone, so the rate holds on a busy machine.
    let start = std::time::Instant::now();
    for sent in 1u32.. {
        let _ = socket.send_to(b"x", addr);
        if let Some(wait) = (every * sent).checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    unreachable!()
}

/// One datagram to a new destination each time (127.1.0.0/16, every port), `per_second`
/// of them: each a new flow, an entry of the conntrack table where it is on.
fn udp_spray(per_second: u64) -> ! {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    const BATCH: u32 = 500;
    let every = Duration::from_nanos(1_000_000_000 * u64::from(BATCH) / per_second.max(1));
    ready();
    let start = std::time::Instant::now();
    let destinations = (0u32..).map(|i| {
        let [_, _, hi, lo] = (i / 65_535 % 65_536).to_be_bytes();
        let port = (i % 65_535 + 1) as u16;
        SocketAddr::from(([127, 1, hi, lo], port))
    });
    for (sent, to) in (1u32..).zip(destinations) {
        let _ = socket.send_to(b"x", to);
        if sent % BATCH == 0
            && let Some(wait) = (every * (sent / BATCH)).checked_sub(start.elapsed())
        {
            thread::sleep(wait);
        }
    }
    unreachable!()
}

fn udp_sink(addr: SocketAddr, rcvbuf: usize) -> ! {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    socket.bind(&addr.into()).expect("bind");
    pause()
}

fn tcp_listen(addr: SocketAddr, backlog: i32) -> ! {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(backlog).expect("listen");
    pause()
}

fn tcp_connect_burst(addr: SocketAddr, count: usize, wait_ms: u64) {
    let sockets: Vec<Socket> = (0..count)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            // EINPROGRESS is the normal answer of a non-blocking connect.
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(wait_ms));
    // Closing sockets still in SYN_SENT sends nothing, so no SYN is retried after exit.
    drop(sockets);
}

fn tcp_slow_accept(addr: SocketAddr, backlog: i32, drain_ms: u64, relisten_ms: u64) -> ! {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(backlog).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    ready();
    let mut last_listen = std::time::Instant::now();
    loop {
        thread::sleep(Duration::from_millis(drain_ms));
        // Accept and close whatever waits: the queue empties only this often.
        while socket.accept().is_ok() {}
        if relisten_ms > 0 && last_listen.elapsed() >= Duration::from_millis(relisten_ms) {
            // listen() on a listening socket sets its backlog again, capped by the
            // namespace's net.core.somaxconn as it is now.
            socket.listen(backlog).expect("listen again");
            last_listen = std::time::Instant::now();
        }
    }
}

fn tcp_connects(addr: SocketAddr, count: usize, hold: bool) {
    let (mut connected, mut refused, mut noport, mut other) = (0, 0, 0, 0);
    let mut held = Vec::new();
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(stream) => {
                connected += 1;
                if hold {
                    held.push(stream);
                }
            }
            Err(err) => match err.raw_os_error() {
                Some(libc::ECONNREFUSED) => refused += 1,
                Some(libc::EADDRNOTAVAIL) => noport += 1,
                _ => other += 1,
            },
        }
    }
    println!("connected {connected} refused {refused} noport {noport} other {other}");
    std::io::stdout().flush().expect("stdout");
    if hold {
        // Whatever the peer does to them (a reset) happens while they are open.
        thread::sleep(Duration::from_millis(1000));
    }
    drop(held);
}

/// Accepts and resets every connection: `SO_LINGER` with a zero timeout makes close()
/// send a RST instead of a FIN. The reset comes 50 ms after the accept, so that it never
/// races the client's connect() returning.
fn tcp_reset_server(addr: SocketAddr) -> ! {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(128).expect("listen");
    ready();
    loop {
        let (conn, _) = socket.accept().expect("accept");
        conn.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        thread::sleep(Duration::from_millis(50));
        drop(conn);
    }
}

fn read_fsync(path: &str, every: Duration) -> ! {
    use std::os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open");
    // O_DIRECT wants a buffer aligned to the logical block size.
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
    // SAFETY: a non-zero size; freed never (the process runs until killed).
    let buf = unsafe { std::alloc::alloc(layout) };
    ready();
    loop {
        // SAFETY: `buf` holds 4096 bytes.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.cast(), 4096, 0) };
        assert_eq!(n, 4096, "read: {}", std::io::Error::last_os_error());
        file.sync_all().expect("fsync");
        thread::sleep(every);
    }
}

fn tcp_flow(addr: SocketAddr, chunk: usize, every_ms: u64) -> ! {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let data = vec![0x5au8; chunk];
    ready();
    loop {
        stream.write_all(&data).expect("send");
        thread::sleep(Duration::from_millis(every_ms));
    }
}

/// A minimal DNS client and server, enough to drive the probe with known latencies.
mod dns {
    use std::{
        io::{Read as _, Write as _},
        net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
        thread,
        time::{Duration, Instant},
    };

    /// A query for `name`, type A, class IN, recursion desired.
    pub fn message(txid: u16, name: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + name.len());
        out.extend_from_slice(&txid.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.extend_from_slice(&[0, 0, 1, 0, 1]);
        out
    }

    /// The response to `query`: same id and question, QR and RA set, `rcode`, no answers.
    fn answer(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let mut out = query.to_vec();
        out[2] = 0x81;
        out[3] = 0x80 | (rcode & 0x0f);
        Some(out)
    }

    /// Set by SIGUSR1: answer at once from then on.
    static NO_DELAY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    extern "C" fn remove_delay(_: libc::c_int) {
        NO_DELAY.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits `delay` precisely: a plain sleep may overshoot by a millisecond on a busy
    /// machine, so the last 2 ms are spun.
    fn hold(delay: Duration) {
        if NO_DELAY.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let start = std::time::Instant::now();
        if let Some(coarse) = delay.checked_sub(Duration::from_millis(2)) {
            thread::sleep(coarse);
        }
        while start.elapsed() < delay {
            std::hint::spin_loop();
        }
    }

    pub fn server(addr: SocketAddr, delay: Duration, rcode: &str) {
        let rcode: Option<u8> = (rcode != "never").then(|| rcode.parse().expect("RCODE"));
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                libc::SIGUSR1,
                remove_delay as *const () as libc::sighandler_t,
            );
        }
        let udp = UdpSocket::bind(addr).expect("bind udp");
        let tcp = TcpListener::bind(addr).expect("bind tcp");
        thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                thread::spawn(move || serve_tcp(stream, delay, rcode));
            }
        });
        super::ready();
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                continue;
            };
            hold(delay);
            if let Some(reply) = rcode.and_then(|rcode| answer(&buf[..n], rcode)) {
                let _ = udp.send_to(&reply, peer);
            }
        }
    }

    fn serve_tcp(mut stream: TcpStream, delay: Duration, rcode: Option<u8>) {
        loop {
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).is_err() {
                return;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut query).is_err() {
                return;
            }
            hold(delay);
            if let Some(reply) = rcode.and_then(|rcode| answer(&query, rcode)) {
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                // One write: the length prefix and the message in one segment.
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        }
    }

    pub fn query(server: SocketAddr, name: &str, count: usize, tcp: bool, timeout: Duration) {
        let mut latencies = Vec::with_capacity(count);
        for i in 0..count {
            let txid = 0x1000u16.wrapping_add(i as u16);
            let query = message(txid, name);
            let took = if tcp {
                query_tcp(server, &query, timeout)
            } else {
                query_udp(server, &query, timeout)
            };
            if let Some(took) = took {
                latencies.push(took.as_secs_f64() * 1000.0);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let median = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
        let fastest = latencies.first().copied().unwrap_or(0.0);
        println!(
            "answered {} median_ms {median:.3} min_ms {fastest:.3}",
            latencies.len()
        );
    }

    /// One query; the time from just before it is sent to its answer (what the probe
    /// measures too: socket setup and the TCP handshake are not part of it).
    fn query_udp(server: SocketAddr, query: &[u8], timeout: Duration) -> Option<Duration> {
        let local: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(local).expect("bind");
        socket.set_read_timeout(Some(timeout)).expect("timeout");
        let started = Instant::now();
        socket.send_to(query, server).ok()?;
        let mut buf = [0u8; 1500];
        let answered =
            matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 2 && buf[..2] == query[..2]);
        answered.then(|| started.elapsed())
    }

    fn query_tcp(server: SocketAddr, query: &[u8], timeout: Duration) -> Option<Duration> {
        let mut stream = TcpStream::connect_timeout(&server, timeout).ok()?;
        stream.set_read_timeout(Some(timeout)).expect("timeout");
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        let started = Instant::now();
        stream.write_all(&framed).ok()?;
        let mut len = [0u8; 2];
        let mut reply = [0u8; 2];
        let answered = stream.read_exact(&mut len).is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && reply == query[..2];
        answered.then(|| started.elapsed())
    }

    /// Deterministic noise: a fixed-seed xorshift, so every run sends the same bytes.
    /// None of them has exactly one question, so none can pass for a query.
    pub fn garbage(server: SocketAddr, count: usize) {
        let socket = UdpSocket::bind(if server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .expect("bind");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut sent = 0;
        for i in 0..count {
            let len = 13 + (next() % 48) as usize;
            let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if packet[4..6] == [0, 1] {
                packet[5] = 2;
            }
            sent += usize::from(socket.send_to(&packet, server).is_ok());
            // Truncated: shorter than a DNS header.
            let short = &message(i as u16, "x.test")[..5];
            sent += usize::from(socket.send_to(short, server).is_ok());
        }
        println!("sent {sent}");
    }
}

/// A userspace link with a fixed delay: raw packet sockets on two interfaces that carry
/// no addresses, each frame sent on the other side after the delay. With
/// `PACKET_VNET_HDR` the kernel hands over offload metadata with each frame (a segment
/// with its checksum still to compute, a TSO super-frame) and takes it back on send, so
/// veth's offloads need not be turned off.
mod delay_bridge {
    use std::{
        ffi::CString,
        sync::mpsc,
        thread,
        time::{Duration, Instant},
    };

    const ETH_P_ALL: u16 = 0x0003;
    const SOL_PACKET: i32 = 263;
    const PACKET_VNET_HDR: i32 = 15;
    const PACKET_OUTGOING: u8 = 4;

    fn socket(interface: &str) -> i32 {
        let name = CString::new(interface).expect("interface name");
        // SAFETY: plain libc calls with valid arguments; failures are checked.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            assert!(index != 0, "no interface {interface}");
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ALL.to_be()),
            );
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let on: i32 = 1;
            let rc = libc::setsockopt(
                fd,
                SOL_PACKET,
                PACKET_VNET_HDR,
                (&raw const on).cast(),
                size_of::<i32>() as u32,
            );
            assert!(
                rc == 0,
                "PACKET_VNET_HDR: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert!(
                rc == 0,
                "bind {interface}: {}",
                std::io::Error::last_os_error()
            );
            fd
        }
    }

    /// Frames arriving on `from` go out on `to` after `delay`, in order.
    fn forward(from: i32, to: i32, delay: Duration) {
        let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
        thread::spawn(move || {
            for (at, frame) in due {
                thread::sleep(at.saturating_duration_since(Instant::now()));
                // SAFETY: a valid buffer; a failed send is a lost frame, as on a wire.
                unsafe { libc::send(to, frame.as_ptr().cast(), frame.len(), 0) };
            }
        });
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: zeroed sockaddr_ll and a buffer of the length given.
            let (n, kind) = unsafe {
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    from,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut addr).cast(),
                    &raw mut len,
                );
                (n, addr.sll_pkttype)
            };
            if n <= 0 {
                continue;
            }
            // Our own sends on this interface come back as outgoing: not for the peer.
            if kind == PACKET_OUTGOING {
                continue;
            }
            let frame = buf[..n as usize].to_vec();
            if queue.send((Instant::now() + delay, frame)).is_err() {
                return;
            }
        }
    }

    pub fn run(a: &str, b: &str, delay: Duration) {
        let (fa, fb) = (socket(a), socket(b));
        super::ready();
        thread::spawn(move || forward(fb, fa, delay));
        forward(fa, fb, delay);
    }
}
