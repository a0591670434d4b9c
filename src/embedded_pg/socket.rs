//! Where a cluster's unix socket lives and how clients reach it: the socket directory
//! (the data directory itself, or a private `/tmp/penguin-jobs-pg-<hash>` when that path
//! is too long or odd), and the URL over that socket.
//!
//! Must never use a socket directory that someone else owns, nor leave one readable by
//! other users: clients connect with `trust` authentication, so the directory (0700) is
//! the only guard.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::privileges::RunAs;
use super::{EmbeddedError, Result, SUPERUSER, io_err};

/// Longest socket file path we accept (`sun_path` holds 108 bytes including
/// the terminating NUL; keep a margin).
const MAX_SOCKET_PATH: usize = 100;

/// Socket directory for a cluster whose data lives in `data_dir`: the data
/// directory itself if the socket path fits in a unix socket address and the
/// path needs no quoting in `unix_socket_directories`, else
/// `/tmp/penguin-jobs-pg-<hash of data_dir>`.
pub(super) fn socket_dir_for(data_dir: &Path, port: u16) -> PathBuf {
    let bytes = data_dir.as_os_str().as_bytes();
    let socket_file = format!("/.s.PGSQL.{port}");
    let plain = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+@~:=".contains(b));
    if plain && bytes.len() + socket_file.len() <= MAX_SOCKET_PATH {
        data_dir.to_path_buf()
    } else {
        PathBuf::from(format!("/tmp/penguin-jobs-pg-{:016x}", fnv1a64(bytes)))
    }
}

/// FNV-1a: a hash that is stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(super) fn socket_url(socket_dir: &Path, port: u16, database: &str) -> String {
    format!(
        "postgres://{SUPERUSER}@localhost/{}?host={}&port={port}&sslmode=disable",
        percent_encode(database.as_bytes(), b""),
        percent_encode(socket_dir.as_os_str().as_bytes(), b"/"),
    )
}

/// Percent-encode everything but unreserved characters and `keep`.
fn percent_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Create the private socket directory (0700, owned by the server's user) or
/// check that an existing one is ours.
pub(super) fn ensure_socket_dir(dir: &Path, owner_uid: u32, run_as: Option<RunAs>) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            if let Some(r) = run_as {
                std::os::unix::fs::lchown(dir, Some(r.uid), Some(r.gid))
                    .map_err(io_err("change owner of", dir))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
            if !meta.is_dir() || meta.uid() != owner_uid {
                return Err(EmbeddedError::SocketDirNotOwned {
                    dir: dir.to_path_buf(),
                    uid: owner_uid,
                });
            }
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err("set permissions of", dir))?;
            }
            Ok(())
        }
        Err(e) => Err(io_err("create directory", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_data_dir_holds_its_own_socket() {
        let dir = Path::new("/srv/penguin-jobs/postgres");
        assert_eq!(socket_dir_for(dir, 5432), dir);
    }

    #[test]
    fn long_data_dir_gets_hashed_socket_dir_under_tmp() {
        let long = PathBuf::from(format!("/home/someone/{}/postgres", "x".repeat(120)));
        let s = socket_dir_for(&long, 5432);
        assert!(s.starts_with("/tmp"), "{}", s.display());
        assert!(s.join(".s.PGSQL.5432").as_os_str().len() <= MAX_SOCKET_PATH);
        // Stable and distinct per data directory.
        assert_eq!(s, socket_dir_for(&long, 5432));
        let other = PathBuf::from(format!("/home/someone/{}/postgres2", "x".repeat(120)));
        assert_ne!(s, socket_dir_for(&other, 5432));
    }

    #[test]
    fn boundary_of_socket_path_length() {
        let suffix = "/.s.PGSQL.5432".len();
        let fits = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH - suffix - 1)));
        assert_eq!(socket_dir_for(&fits, 5432), fits);
        let too_long = PathBuf::from(format!("/{}", "a".repeat(MAX_SOCKET_PATH - suffix)));
        let hashed = socket_dir_for(&too_long, 5432);
        assert!(
            hashed
                .to_string_lossy()
                .starts_with("/tmp/penguin-jobs-pg-")
        );
    }

    #[test]
    fn odd_characters_move_socket_to_tmp() {
        assert!(socket_dir_for(Path::new("/srv/a b/pg"), 5432).starts_with("/tmp/"));
        assert!(socket_dir_for(Path::new("/srv/a,b/pg"), 5432).starts_with("/tmp/"));
    }

    #[test]
    fn url_format() {
        assert_eq!(
            socket_url(Path::new("/tmp/penguin-jobs-pg-1"), 5432, "penguin"),
            "postgres://postgres@localhost/penguin?host=/tmp/penguin-jobs-pg-1&port=5432&sslmode=disable"
        );
        assert_eq!(
            socket_url(Path::new("/srv/x~y"), 5433, "a b/c"),
            "postgres://postgres@localhost/a%20b%2Fc?host=/srv/x~y&port=5433&sslmode=disable"
        );
    }

    #[test]
    fn url_is_understood_by_sqlx() {
        use sqlx::postgres::PgConnectOptions;
        use std::str::FromStr;
        let url = socket_url(Path::new("/tmp/penguin-jobs-pg-1"), 5433, "my db");
        let o = PgConnectOptions::from_str(&url).expect("sqlx parses the url");
        assert_eq!(
            o.get_socket(),
            Some(&PathBuf::from("/tmp/penguin-jobs-pg-1"))
        );
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_database(), Some("my db"));
        assert_eq!(o.get_username(), "postgres");
    }
}
