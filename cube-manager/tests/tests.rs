//! Integration tests of the cube manager, as one binary with a module per area.
//!
//! `manager` and `http_api` run against fake workers. `cluster` and `restart` (simulated
//! runtime), `remote` (cube-worker's HTTP API) and `docker` (the local Docker Engine) need
//! the `in-process` feature, which is on by default.

mod util;

mod health;
mod http_api;
mod liveness;
mod manager;

#[cfg(feature = "in-process")]
mod cluster;
#[cfg(feature = "in-process")]
mod docker;
#[cfg(feature = "in-process")]
mod join;
#[cfg(feature = "in-process")]
mod persistence;
#[cfg(feature = "in-process")]
mod port_conflicts;
#[cfg(feature = "in-process")]
mod remote;
#[cfg(feature = "in-process")]
mod restart;
