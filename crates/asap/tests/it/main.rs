//! asap's integration tests: one binary (STYLE.md §6), one module per concern.

mod rsplib;
mod samples;
mod tshark;
