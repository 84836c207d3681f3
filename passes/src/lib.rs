//! Graph transformations over the kiln dialect.
