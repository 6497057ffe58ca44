//! Subcommands of the `rolegate` binary that live outside main.rs.

pub(crate) mod admin;
