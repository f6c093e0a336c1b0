//! Integration tests of the cube worker: actor tests on the simulated runtime (restart
//! policies and health checks among them), the HTTP API, and a few real-Docker tests (named
//! `docker_*`).

mod adoption;
mod docker;
mod health;
mod http;
mod reconcile;
mod restart;
mod simulated;
mod support;
