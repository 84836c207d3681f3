//! The e-graph: its language, analysis, and the conversions from and to the
//! dialect graph.

pub mod analysis;
pub mod convert;
pub mod lang;
