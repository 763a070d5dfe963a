//! Workspace-level tests live beside this file, one file per concern; see `Cargo.toml`.
