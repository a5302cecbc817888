//! Free 127.0.0.1 ports for servers a test starts later. Shared with `benches/rc_replay.rs`
//! (`#[path]`), whose fake Rocket.Chat server takes its port from here.

/// A free 127.0.0.1 port for a server the test starts later (a gateway's `listen`).
///
/// Why not bind port 0 and release it: the kernel hands the same ephemeral ports to every
/// later bind(0) and outgoing connection (fake servers, hook servers, the agent CLI's own
/// requests), so between our release and the daemon's bind another test could take it — CI
/// saw exactly that as "Address already in use". Ports are picked below the ephemeral range
/// instead, where no bind(0) or connect lands, starting at a per-process offset and never
/// handed out twice by one process; each is probed before it is returned.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = ephemeral_range();
    // Prefer the ports below the ephemeral range; fall back to those above it.
    let (start, span) = if low > 11_024 {
        (10_000, low - 10_000)
    } else {
        (high + 1, 65_535 - high)
    };
    let offset = std::process::id() * 7_919 % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left for the tests");
        let port = (start + (offset + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Linux's ephemeral port range (the kernel default if it cannot be read).
fn ephemeral_range() -> (u32, u32) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(low), Some(high)) if low <= high && high <= 65_535 => (low, high),
        _ => (32_768, 60_999),
    }
}
