//! `tessera admin`: administer a running server through its API (`tessera_server::cli`).

pub use tessera_server::cli::AdminArgs;

use crate::Output;
use crate::error::CliError;
use crate::server::cli_error;

/// Runs one admin command and prints its report (JSON with `--json`).
pub fn run(args: AdminArgs, out: Output) -> Result<(), CliError> {
    let report = tessera_server::cli::run_admin(&args).map_err(cli_error)?;
    out.emit(|| report.human.clone(), || report.json.clone());
    Ok(())
}
