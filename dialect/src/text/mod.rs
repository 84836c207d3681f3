//! The `.kir` text form of graphs: SSA-style, one op per line, a type on
//! every value. [`print`] writes the canonical form and [`parse`] reads it
//! back: `parse(print(g)) == g`, and `print(parse(t)) == t` for canonical
//! text (comments and blank lines above items are kept).
//!
//! ```text
//! graph mlp {
//!   input %x: f32[batch, 64]
//!   weight %w: f32[64, 32]
//!   %h: f32[batch, 32] = matmul(%x, %w)
//!   %y: f32[batch, 32] = gelu(%h) {approximate = tanh}
//!   output y = %y
//! }
//! ```

pub mod lexer;
mod parse;
mod print;

pub use parse::{ParseError, parse};
pub use print::{name_token, print, value_token};
