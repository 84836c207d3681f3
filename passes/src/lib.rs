//! Graph transformations over the kiln dialect.
//!
//! Today: the cleanup passes every pipeline runs ([`cleanup`]). The e-graph
//! optimizer (fusion, quantization lowering and layout selection under one
//! cost model) and the lowering to kernel plans join this crate next.

pub mod cleanup;
