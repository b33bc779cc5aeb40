//! etcd's `/health` endpoint over a plain TCP connection (no HTTP client dependency needed):
//! `{"health":"true"}` once the member has a raft leader and can serve a quorum read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// True when the member on `port` answers `/health` with `"health":"true"`.
pub(crate) fn is_healthy(port: u16) -> bool {
    let attempt = || -> std::io::Result<String> {
        let addr = ([127, 0, 0, 1], port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    attempt().is_ok_and(|body| body.contains(r#""health":"true""#))
}
