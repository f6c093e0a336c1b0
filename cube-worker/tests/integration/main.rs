//! Integration tests of the cube worker: actor tests on the simulated runtime (restart
//! policies among them), the HTTP API, and a few real-Docker tests (named `docker_*`).

mod docker;
mod http;
mod restart;
mod simulated;
mod support;
