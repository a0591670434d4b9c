//! Process-wide settings the daemon needs before it serves anything: today, the limit of
//! open files. Each connection to the shim, to PostgreSQL and to a provider is a file;
//! the common soft limit of 1,024 lets a thousand idle or slow clients of the shim leave
//! no room for a database reconnect ("Too many open files").
//!
//! Must never lower a limit, and never fail the start: a limit it cannot raise is logged.

/// Raises the soft limit of open files to the hard limit (as servers such as nginx and
/// Go's runtime do). Returns the (old, new) soft limits.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let old = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((old, limit.rlim_cur))
}

/// The soft limit of open files, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// [`raise_open_files_limit`], logged: at debug level when raised, as a warning when the
/// limit stays low.
pub fn raise_open_files_limit_logged() {
    match raise_open_files_limit() {
        Ok((_, new)) if new < 4096 => tracing::warn!(
            limit = new,
            "the open files limit is low (raise the hard limit, e.g. LimitNOFILE=65536 in the unit): \
             slow or idle clients of the shim could leave no room for database connections"
        ),
        Ok((old, new)) => tracing::debug!(from = old, to = new, "open files limit raised"),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let (_, new) = raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(new, limit.rlim_cur);
    }
}
