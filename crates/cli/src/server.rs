//! `tessera server`: run the card-management server (`tessera_server::cli`).

pub use tessera_server::cli::ServerArgs;
use tessera_server::cli::{Failure, FailureKind};

use crate::error::{CliError, Exit};

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: ServerArgs) -> Result<(), CliError> {
    tessera_server::cli::run_server(&args).map_err(cli_error)
}

/// Exit classes of server and admin failures: a refusal by the server is reported like a
/// card's refusal (1), an unreachable server like an unreachable reader (3).
pub fn cli_error(f: Failure) -> CliError {
    let exit = match f.kind {
        FailureKind::Usage => Exit::Usage,
        FailureKind::Transport => Exit::Transport,
        FailureKind::Refused => Exit::CardSaidNo,
        FailureKind::Local => Exit::Other,
    };
    CliError::new(exit, f.message)
}
