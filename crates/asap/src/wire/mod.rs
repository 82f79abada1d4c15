//! The RSerPool wire codec (spec §3–§8, §12): bytes ↔ typed messages.

pub mod param;
