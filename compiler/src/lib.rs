//! The kiln compiler.
