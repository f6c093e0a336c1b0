//! Integration tests of the cube worker: actor tests on the simulated runtime, the HTTP
//! API, and a few real-Docker tests (named `docker_*`).

mod docker;
mod http;
mod simulated;
mod support;
