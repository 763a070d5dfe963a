//! `sessionctl`: operate user sessions outside the application, on the store the manager's
//! configuration names (environment, TOML file, URLs). See docs/operations.md.
//!
//! Exit codes: 0 done; 1 a store or I/O failure; 2 a usage or configuration error; 3 the named
//! session does not exist; 4 done in part (lines or sessions refused, or a migration's check
//! failed).

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

/// Why a command ended without success, and the exit code that says so.
#[derive(Debug)]
enum Failure {
    /// A store or I/O operation failed (exit 1).
    Runtime(String),
    /// The command line or the configuration is wrong (exit 2).
    Usage(String),
    /// The named session is not there (exit 3).
    NotFound(String),
    /// The work was done in part (exit 4).
    Partial(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Runtime(_) => 1,
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::Partial(_) => 4,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Runtime(m) | Self::Usage(m) | Self::NotFound(m) | Self::Partial(m) => m,
        }
    }
}

impl From<session_core::SessionError> for Failure {
    fn from(err: session_core::SessionError) -> Self {
        let message = session_core::ErrorChain(&err).to_string();
        match err {
            session_core::SessionError::Config { .. }
            | session_core::SessionError::InvalidInput { .. }
            | session_core::SessionError::InvalidToken { .. } => Self::Usage(message),
            _ => Self::Runtime(message),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Self::Runtime(err.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sessionctl: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sessionctl: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}
