//! Rewrite rules as named data, one file per family.
//!
//! A rule is a name, a one-line identity, and a function that looks at one
//! e-node and, when the rule applies, describes the equal expression to add
//! ([`Rhs`]). Rules are directional; none is a blanket commutativity or
//! associativity. [`rewrites`] turns a family into egg rewrites; every rule
//! has a test that evaluates both sides with the reference interpreter.

pub mod algebra;
#[cfg(test)]
pub mod check;
pub mod fusion;
pub mod layout;
pub mod quant;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use egg::{Applier, Id, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use kiln_dialect::DType;
use kiln_dialect::ops::Op;

use crate::egraph::analysis::{KGraph, Meta, add_checked};
use crate::egraph::lang::KNode;

/// The right-hand side of a rule: an expression over existing classes.
#[derive(Clone, Debug)]
pub enum Rhs {
    /// An existing class.
    Class(Id),
    /// A dialect op over sub-expressions.
    Op(Op, Vec<Rhs>),
    /// A scalar constant (shape `[]`).
    Scalar(f64, DType),
}

impl Rhs {
    /// An op over existing classes.
    pub fn op(op: Op, args: &[Id]) -> Rhs {
        Rhs::Op(op, args.iter().map(|&a| Rhs::Class(a)).collect())
    }
}

/// A rewrite rule.
#[derive(Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    /// The identity the rule applies, in one line.
    pub identity: &'static str,
    /// Looks at an e-node; returns the equal expression when the rule applies.
    pub apply: fn(&KGraph, &KNode) -> Option<Rhs>,
}

/// Adds an [`Rhs`] to the e-graph, type-checking each new node; `None` if
/// some node would be ill-typed (the rule then does not fire).
pub fn instantiate(eg: &mut KGraph, rhs: &Rhs) -> Option<Id> {
    instantiate_by(eg, rhs, "")
}

/// [`instantiate`], recording `rule` as the maker of each new class.
fn instantiate_by(eg: &mut KGraph, rhs: &Rhs, rule: &'static str) -> Option<Id> {
    match rhs {
        Rhs::Class(c) => Some(*c),
        Rhs::Scalar(x, dt) => Some(crate::egraph::analysis::add_scalar(eg, *x, *dt)),
        Rhs::Op(op, args) => {
            let ids = args
                .iter()
                .map(|a| instantiate_by(eg, a, rule))
                .collect::<Option<Vec<_>>>()?;
            let oid = eg.analysis.ops.intern(op.clone(), None, None);
            let node = KNode::op(oid, ids);
            let existed = eg.lookup(node.clone()).is_some();
            let id = add_checked(eg, node)?;
            if !existed && !rule.is_empty() {
                eg.analysis.made_by.insert(id, rule);
            }
            Some(id)
        }
    }
}

/// A rule as an egg searcher: matches the classes holding a node the rule
/// applies to. Classes in the set are not searched: they belong to repeated
/// block instances, which get a copy of the first instance's results.
struct RuleSearcher(Rule, Arc<HashSet<Id>>);

impl Searcher<KNode, Meta> for RuleSearcher {
    fn search_eclass_with_limit(
        &self,
        egraph: &KGraph,
        eclass: Id,
        _limit: usize,
    ) -> Option<SearchMatches<'_, KNode>> {
        if self.1.contains(&eclass) {
            return None;
        }
        let t = Instant::now();
        let hit = egraph[eclass]
            .nodes
            .iter()
            .any(|n| (self.0.apply)(egraph, n).is_some());
        crate::stats::add_search_time(self.0.name, t.elapsed());
        hit.then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

/// A rule as an egg applier: adds the right-hand side of every matching
/// node of the class and unions it in (with the rule's name as the reason,
/// for explanations).
struct RuleApplier(Rule);

impl Applier<KNode, Meta> for RuleApplier {
    fn apply_one(
        &self,
        egraph: &mut KGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&egg::PatternAst<KNode>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let nodes = egraph[eclass].nodes.clone();
        let mut changed = Vec::new();
        for n in nodes {
            let Some(rhs) = (self.0.apply)(egraph, &n) else {
                continue;
            };
            let Some(new) = instantiate_by(egraph, &rhs, self.0.name) else {
                continue;
            };
            let (a, b) = (egraph.find(eclass), egraph.find(new));
            if a != b {
                let from = egraph.add(n.clone());
                if egraph.union_trusted(from, new, rule_name) {
                    changed.push(egraph.find(eclass));
                }
            }
        }
        changed
    }
}

/// A family of rules as egg rewrites.
pub fn rewrites(rules: &[Rule]) -> Vec<Rewrite<KNode, Meta>> {
    rewrites_except(rules, &Arc::new(HashSet::new()))
}

/// A family of rules as egg rewrites that do not search `frozen` classes.
pub fn rewrites_except(rules: &[Rule], frozen: &Arc<HashSet<Id>>) -> Vec<Rewrite<KNode, Meta>> {
    rules
        .iter()
        .map(|r| {
            Rewrite::new(r.name, RuleSearcher(*r, frozen.clone()), RuleApplier(*r))
                .expect("rule names are unique")
        })
        .collect()
}
