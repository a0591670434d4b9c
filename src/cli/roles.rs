//! `roles`: the SQL that sets up the runtime role (README: Database roles), printed for the
//! owner role to apply after every `migrate`. Reads the grant list compiled into the binary;
//! connects to nothing.
//!
//! Must never print anything but SQL and SQL comments on standard output (it is piped to
//! `psql`), and never a password: the operator sets the role's password.

use super::*;
use crate::queue::grants::{DEFAULT_RUNTIME_ROLE, RuntimeRole};

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Print idempotent SQL, to run as the owner role after `migrate`: creates the runtime
    /// role (NOLOGIN) if missing and grants it exactly what `run --no-migrate` needs.
    PrintSql {
        /// The role the daemon connects as.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_RUNTIME_ROLE)]
        runtime_role: String,
        /// The role that runs `migrate` and owns schema penguin, for the default privileges
        /// of tables later migrations add. Default: the role that runs the SQL.
        #[arg(long, value_name = "NAME")]
        owner_role: Option<String>,
    },
}

pub(super) fn roles(cmd: RolesCommand) -> anyhow::Result<()> {
    match cmd {
        RolesCommand::PrintSql {
            runtime_role,
            owner_role,
        } => {
            let role =
                RuntimeRole::new(&runtime_role, owner_role.as_deref()).map_err(user_error)?;
            print!("{}", role.script().map_err(user_error)?);
        }
    }
    Ok(())
}
