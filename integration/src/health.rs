//! etcd's `/health` endpoint over a plain TCP connection (no HTTP client dependency needed):
//! `{"health":"true"}` once the member has a raft leader and can serve a quorum read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// True when the member on `port` answers `/health` with `"health":"true"`.
pub(crate) fn is_healthy(port: u16) -> bool {
    get(port, "/health").is_ok_and(|body| body.contains(r#""health":"true""#))
}

/// The whole HTTP/1.0 response (headers and body) to `GET path` on a loopback port.
pub(crate) fn get(port: u16, path: &str) -> std::io::Result<String> {
    let addr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The sum of every series of the Prometheus metric `name` in `text` (None when absent).
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // The name must end here: `name 3` or `name{labels} 3`, not `name_other 3`.
            let rest = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_series_of_one_metric_only() {
        let text = "# HELP x\netcd_mvcc_put_total 5\netcd_mvcc_put_total_other 7\n\
                    etcd_x{a=\"1\"} 2\netcd_x{a=\"2\"} 3.5\n";
        assert_eq!(metric_sum(text, "etcd_mvcc_put_total"), Some(5.0));
        assert_eq!(metric_sum(text, "etcd_x"), Some(5.5));
        assert_eq!(metric_sum(text, "etcd_y"), None);
    }
}
