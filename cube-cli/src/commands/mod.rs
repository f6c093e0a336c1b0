//! The subcommands of `cube`, one module per command family.

pub mod client_commands;
pub mod daemons;
pub mod store;
