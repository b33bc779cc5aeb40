//! Free loopback ports: bind port 0, read what the OS chose, release it. Another process can take
//! the port in between, so the cluster retries its start with fresh ports when etcd cannot bind.

use std::net::TcpListener;

/// `n` distinct ports that were free a moment ago.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Hold every listener until all are chosen, so the OS cannot hand out one port twice.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}
