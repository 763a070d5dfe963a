//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operate user sessions on the store the configuration names: look inside, revoke, purge,
/// export, import, and copy every session from one backend to another.
///
/// The store comes from the manager's configuration: defaults, then the TOML file
/// (`--config` or `SESSION_CONFIG_FILE`), then `SESSION_*` variables, then `--store`.
#[derive(Debug, Parser)]
#[command(name = "sessionctl", version, about, long_about = None)]
pub(crate) struct Cli {
    /// A TOML configuration file (as `SESSION_CONFIG_FILE`).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The session store's URL, over the configuration's `store_url`.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) store: Option<String>,
    /// Machine-readable output: one JSON document (an array for `list`).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Live sessions, users, sessions per user and expiries ahead (walks every session).
    Stats,
    /// One session by its handle (walks the store unless `--user` names its owner).
    Inspect {
        /// The session's handle.
        handle: String,
        /// The session's user: one index read instead of a walk.
        #[arg(long, value_name = "ID")]
        user: Option<String>,
    },
    /// A user's live sessions.
    List {
        /// The user.
        #[arg(long, value_name = "ID")]
        user: String,
    },
    /// Sign out one session, or every session of a user.
    Revoke(Revoke),
    /// Remove expired sessions now (stores that keep them until purged).
    Purge {
        /// Say what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Every live session as JSON lines (handles and instants, never a token).
    Export {
        /// The file to write; standard output if absent.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sessions from JSON lines (as `export` writes them), each under its handle.
    Import {
        /// The file to read; standard input if absent.
        #[arg(long = "in", short, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Parse and validate every line; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy every live session from one store to another, resumably, then check counts and a
    /// sample.
    Migrate(Migrate),
}

/// `revoke`'s arguments.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["handle", "user"])))]
pub(crate) struct Revoke {
    /// The session's handle.
    #[arg(long, value_name = "H")]
    pub(crate) handle: Option<String>,
    /// Every session of this user.
    #[arg(long, value_name = "ID")]
    pub(crate) user: Option<String>,
    /// With `--user`: keep this session (the caller's own).
    #[arg(long, value_name = "H", requires = "user")]
    pub(crate) except: Option<String>,
    /// Say what would be revoked; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// `migrate`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct Migrate {
    /// The store to copy from.
    #[arg(long, value_name = "URL")]
    pub(crate) from: String,
    /// The store to copy to.
    #[arg(long, value_name = "URL")]
    pub(crate) to: String,
    /// Where the walk's position and counts are kept after every page, to resume an
    /// interrupted run (removed when the copy completes).
    #[arg(long, value_name = "FILE")]
    pub(crate) state: Option<PathBuf>,
    /// Sessions a page.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch: u32,
    /// Sessions checked in the target after the copy.
    #[arg(long, default_value_t = 100)]
    pub(crate) sample: usize,
    /// Walk the source and say what would be copied; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}
