//! The open-files limit of `gatehouse serve`: raised from its soft value to
//! the hard one at start, so that `EMFILE` never comes before
//! `[server] max_connections` does, with a warning when even the hard limit
//! is below what `max_connections` needs (each relayed connection can hold
//! two descriptors: the partner's and the upstream's).

// `rlim_t` is `u64` on 64-bit Linux but not everywhere: the casts stay.
#![allow(clippy::unnecessary_cast)]

/// Descriptors the broker keeps besides connections: the journal's files,
/// listeners, sockets, the watcher, configuration reads.
const BASE_DESCRIPTORS: u64 = 256;

/// Descriptors `max_connections` partner connections may need.
pub fn needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(BASE_DESCRIPTORS)
}

/// The open-files limit (soft, hard).
pub fn nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// The kernel's ceiling for one process (`fs.nr_open`), used when the hard
/// limit is "unlimited".
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Raises the soft open-files limit to the hard limit; returns (before, after).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    let target = if hard == libc::RLIM_INFINITY as u64 {
        nr_open()
    } else {
        hard
    };
    if soft >= target {
        return Ok((soft, soft));
    }
    let lim = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((soft, nofile()?.0))
}

/// At `serve` start: raise the limit, say so, warn when it stays below
/// what `max_connections` needs. Never fails the start.
pub fn prepare(max_connections: usize) {
    let need = needed(max_connections);
    match raise_nofile() {
        Ok((before, after)) => {
            if after != before {
                tracing::info!(before, after, "open-files limit raised to the hard limit");
            }
            if after < need {
                tracing::warn!(
                    limit = after,
                    needed = need,
                    max_connections,
                    "the open-files limit is below what max_connections needs: connections will fail with EMFILE before max_connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower max_connections"
                );
            }
        }
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_two_per_connection_plus_a_base() {
        assert_eq!(needed(0), BASE_DESCRIPTORS);
        assert_eq!(needed(10_000), 20_000 + BASE_DESCRIPTORS);
        assert_eq!(needed(usize::MAX), u64::MAX);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        // Raising is harmless to the other tests in this process.
        let (_, after) = raise_nofile().unwrap();
        let (soft, hard) = nofile().unwrap();
        assert_eq!(soft, after);
        if hard != libc::RLIM_INFINITY as u64 {
            assert_eq!(soft, hard);
        }
    }
}
