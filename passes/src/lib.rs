//! Graph transformations over the kiln dialect.
//!
//! - [`cleanup`]: dead-code and common-subexpression elimination.
//! - [`egraph`] and [`rules`]: equality saturation with egg; rules are named
//!   data, one file per family.
//! - [`optimize`]: the optimizer's phases, top to bottom.

pub mod cleanup;
pub mod cost;
pub mod egraph;
pub mod explain;
pub mod extract;
pub mod lower;
pub mod optimize;
pub mod plan;
pub mod regions;
pub mod rules;
pub mod stats;
