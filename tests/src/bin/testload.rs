//! Deterministic traffic for the integration tests, run inside a test's namespace and
//! cgroup. Servers print `ready` once listening; clients exit when done.
//!
//! testload tcp-sink ADDR:PORT                 accept and discard until each peer closes
//! testload tcp-send ADDR:PORT BYTES           send BYTES, wait until the peer has all of it
//! testload udp-send ADDR:PORT COUNT SIZE      send COUNT datagrams of SIZE bytes
//! testload udp-sink ADDR:PORT RCVBUF          bind with SO_RCVBUF=RCVBUF, never read
//! testload tcp-listen ADDR:PORT BACKLOG       listen with BACKLOG, never accept
//! testload tcp-connect-burst ADDR:PORT COUNT MS   start COUNT connects, exit after MS
//! testload busy MS                            spin on the CPU for MS milliseconds
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
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("testload: missing argument {i} in {args:?}");
            std::process::exit(2)
        })
    };
    let addr = || -> SocketAddr { arg(1).parse().expect("ADDR:PORT") };
    let num = |i: usize| -> usize { arg(i).parse().expect("number") };
    match arg(0) {
        "tcp-sink" => tcp_sink(addr()),
        "tcp-send" => tcp_send(addr(), num(2)),
        "udp-send" => udp_send(addr(), num(2), num(3)),
        "udp-sink" => udp_sink(addr(), num(2)),
        "tcp-listen" => tcp_listen(addr(), num(2) as i32),
        "tcp-connect-burst" => tcp_connect_burst(addr(), num(2), num(3) as u64),
        "busy" => busy(Duration::from_millis(num(1) as u64)),
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
