//! The e-graph language: dialect ops (interned, attributes included) plus
//! the forms that exist only during optimization (`mat`, the boundary of a
//! kernel).

use std::collections::HashMap;
use std::fmt;

use egg::{Id, Language};
use kiln_dialect::TensorType;
use kiln_dialect::ops::Op;

/// An interned op: its index in the [`OpTable`].
pub type OpId = u32;

/// What an e-node does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Head {
    /// A dialect op with its attributes (and, for sources, name and type).
    Op(OpId),
    /// `mat(x)`: the value is written to memory; a kernel ends here. Every
    /// use of a value starts out through a `mat`; fusion rules offer the
    /// unmaterialized alternative, and extraction chooses.
    Mat,
}

/// An e-node: a head and its operand classes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KNode {
    pub head: Head,
    pub args: Vec<Id>,
}

impl KNode {
    pub fn op(op: OpId, args: Vec<Id>) -> KNode {
        KNode {
            head: Head::Op(op),
            args,
        }
    }

    pub fn mat(x: Id) -> KNode {
        KNode {
            head: Head::Mat,
            args: vec![x],
        }
    }
}

impl Language for KNode {
    type Discriminant = Head;

    fn discriminant(&self) -> Head {
        self.head.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.head == other.head && self.args.len() == other.args.len()
    }

    fn children(&self) -> &[Id] {
        &self.args
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.args
    }
}

impl fmt::Display for KNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.head {
            Head::Op(id) => write!(f, "op{id}"),
            Head::Mat => f.write_str("mat"),
        }
    }
}

/// One interned op. Sources (`input`, `weight`, `constant`, `iota`) carry
/// their declared type; inputs and weights their name.
#[derive(Clone, Debug)]
pub struct OpEntry {
    pub op: Op,
    pub name: Option<String>,
    pub declared: Option<TensorType>,
}

/// The ops of one e-graph, each stored once: equal ops (same attributes,
/// same source name and type) get the same id, so hash-consing sees them
/// as the same head.
#[derive(Clone, Debug, Default)]
pub struct OpTable {
    entries: Vec<OpEntry>,
    index: HashMap<String, OpId>,
}

impl OpTable {
    /// Interns an op.
    pub fn intern(&mut self, op: Op, name: Option<String>, declared: Option<TensorType>) -> OpId {
        let key = format!(
            "{op:?}|{name:?}|{}",
            declared.as_ref().map(|t| t.to_string()).unwrap_or_default()
        );
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = self.entries.len() as OpId;
        self.entries.push(OpEntry { op, name, declared });
        self.index.insert(key, id);
        id
    }

    /// An interned op.
    pub fn get(&self, id: OpId) -> &OpEntry {
        &self.entries[id as usize]
    }
}
