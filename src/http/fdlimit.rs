//! The process's open-file limit, and the default connection cap derived from it.
//!
//! Every connection is a descriptor; so are the model files, ONNX Runtime's, the log, the event
//! loop's and each outgoing URL fetch. With the common soft limit of 1024, 1 124 idle client
//! sockets left no descriptor for anything else (issue 16 §1). `serve` raises the soft limit to
//! the hard one at start and caps connections below it with room to spare.

/// Descriptors kept out of the connection cap's default: model files, ONNX Runtime and
/// tokenizer files, stdio and the log, the runtime's epoll and wake-up descriptors, the
/// URL fetcher's 16 concurrent fetches (a socket each, plus DNS), and sockets evicted at the cap
/// but not yet closed by their task.
pub const FD_HEADROOM: u64 = 256;

/// The default cap never exceeds this: each open connection costs memory (hyper's buffers, and
/// rustls' over TLS, ~10–50 KiB), and Elasticsearch opens at most 50 per node
/// (`xpack.inference.http.max_total_connections`), so 4096 serves ~80 nodes with full pools.
pub const MAX_DEFAULT_CONNECTIONS: usize = 4096;

/// Never a default cap below this, even under a tiny descriptor limit.
const MIN_DEFAULT_CONNECTIONS: usize = 16;

/// The open-file limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (on Linux, to `fs.nr_open` when the hard
/// limit is unlimited). `Err` only when the limit cannot even be read; a refused raise keeps the
/// old soft limit and says so in the result.
#[cfg(unix)]
// `rlim_t` is `u64` on 64-bit Linux and macOS, not on every target: the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn raise() -> std::io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let soft_before = limit.rlim_cur;
    let hard = limit.rlim_max;
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        nr_open().unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft_before >= target {
        return Ok(FdLimit {
            soft_before,
            soft: soft_before,
            hard,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit; the call only reads it.
    let soft = if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        target
    } else {
        soft_before
    };
    Ok(FdLimit {
        soft_before,
        soft,
        hard,
    })
}

#[cfg(not(unix))]
pub fn raise() -> std::io::Result<FdLimit> {
    Err(std::io::Error::other("no RLIMIT_NOFILE on this platform"))
}

/// Linux's ceiling for any descriptor limit.
#[cfg(unix)]
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `--max-connections`' default: the soft limit less [`FD_HEADROOM`], at most
/// [`MAX_DEFAULT_CONNECTIONS`].
pub fn default_max_connections(soft: u64) -> usize {
    let room = soft.saturating_sub(FD_HEADROOM);
    (room.min(MAX_DEFAULT_CONNECTIONS as u64) as usize).max(MIN_DEFAULT_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_the_headroom_and_stays_bounded() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(20_000), MAX_DEFAULT_CONNECTIONS);
        assert_eq!(default_max_connections(100), MIN_DEFAULT_CONNECTIONS);
    }

    #[cfg(unix)]
    #[test]
    fn raising_reaches_the_hard_limit_or_keeps_the_old_one() {
        let limit = raise().expect("getrlimit works");
        assert!(limit.soft >= limit.soft_before);
        // A second call finds nothing left to raise.
        let again = raise().expect("getrlimit works");
        assert_eq!(again.soft_before, limit.soft);
        assert_eq!(again.soft, limit.soft);
    }
}
