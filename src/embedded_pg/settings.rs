//! The server's settings: the options `pg_ctl start` passes on the command line, and the
//! block appended to a new cluster's `postgresql.conf`.
//!
//! Must never let the server listen on TCP: `listen_addresses=''` is both on the command
//! line and in `postgresql.conf` (so a manual `pg_ctl start` does not listen either).

use std::path::Path;

use super::{Durability, Result, io_err};

pub(super) fn server_options(socket_dir: &Path, port: u16, durability: Durability) -> Vec<String> {
    let on_off = match durability {
        Durability::Durable => "on",
        Durability::Throwaway => "off",
    };
    vec![
        "listen_addresses=".into(),
        format!("unix_socket_directories={}", socket_dir.display()),
        "unix_socket_permissions=0700".into(),
        format!("port={port}"),
        "max_connections=200".into(),
        "shared_buffers=256MB".into(),
        // a queue writes WAL fast: checkpoint on time rather than every GB of WAL, so
        // full-page writes after a checkpoint do not come every few seconds under load
        "max_wal_size=4GB".into(),
        "checkpoint_timeout=10min".into(),
        format!("fsync={on_off}"),
        format!("synchronous_commit={on_off}"),
        format!("full_page_writes={on_off}"),
    ]
}

pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Never listen on TCP, even when started by hand without our options.
pub(super) fn forbid_tcp_in_conf(data_dir: &Path) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    let block = "\n# Added by penguin-jobs (embedded PostgreSQL): unix socket only, never TCP.\n\
                 listen_addresses = ''\n\
                 unix_socket_permissions = 0700\n";
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(block.as_bytes()))
        .map_err(io_err("append to", &conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_shell_quoted() {
        assert_eq!(shell_quote("listen_addresses="), "'listen_addresses='");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        let opts = server_options(Path::new("/s"), 5432, Durability::Throwaway);
        assert!(opts.contains(&"fsync=off".to_string()));
        assert!(opts.contains(&"listen_addresses=".to_string()));
        let opts = server_options(Path::new("/s"), 5432, Durability::Durable);
        assert!(opts.contains(&"synchronous_commit=on".to_string()));
    }
}
