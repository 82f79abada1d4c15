//! `rsp`: the RSerPool command line.

fn main() {}
