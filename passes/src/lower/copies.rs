//! Bind-time copies that change nothing: a layout the kernels do not read
//! physically (`relayout` to `packed(mma_b)` lowers to the identity; the
//! backends lay weights out themselves, `lower::lay_out_weights`) still
//! lowers to a bind-time launch that copies the weight. Such a copy costs a
//! second device copy of every weight it touches; readers read the source
//! instead.

use kiln_dialect::kernel::{Body, Expr, Program, Var};

/// Removes every bind-time launch whose kernel copies its one input to an
/// output of the same type and shape element for element, pointing the
/// copy's readers at its source and dropping the copy's buffer; returns how
/// many were removed. A copy that is a program output stays.
pub fn forward_identity_copies(p: &mut Program) -> usize {
    let mut removed = 0;
    let mut i = 0;
    while i < p.launches.len() {
        let l = &p.launches[i];
        let (src, out) = (l.args.first().copied(), l.out);
        let is_output = p.outputs.iter().any(|(_, b)| *b == out);
        let Some(src) = src.filter(|_| l.bind_time && is_identity_copy(l) && !is_output) else {
            i += 1;
            continue;
        };
        p.launches.remove(i);
        for later in &mut p.launches[i..] {
            for a in &mut later.args {
                if *a == out {
                    *a = src;
                }
            }
        }
        drop_buffer(p, out);
        removed += 1;
    }
    removed
}

/// Whether `l` is `out[v0, .., vr] = in0[v0, .., vr]` over equal types and
/// shapes.
fn is_identity_copy(l: &kiln_dialect::kernel::Launch) -> bool {
    let k = &l.kernel;
    let Body::Map {
        expr:
            Expr::Load {
                input: 0,
                index,
                guard: None,
            },
    } = &k.body
    else {
        return false;
    };
    let r = k.output.shape.rank();
    l.args.len() == 1
        && k.inputs.len() == 1
        && k.inputs[0].dtype == k.output.dtype
        && k.inputs[0].shape == k.output.shape
        && index.len() == r
        && index
            .iter()
            .enumerate()
            .all(|(a, e)| *e == Expr::Var(Var(a as u32)))
}

/// Removes buffer `b` (no launch reads or writes it any more) and
/// renumbers the others.
fn drop_buffer(p: &mut Program, b: usize) {
    p.buffers.remove(b);
    let shift = |x: &mut usize| {
        if *x > b {
            *x -= 1;
        }
    };
    p.inputs.iter_mut().for_each(shift);
    p.weights.iter_mut().for_each(shift);
    p.constants.iter_mut().for_each(|(x, _)| shift(x));
    p.outputs.iter_mut().for_each(|(_, x)| shift(x));
    for l in &mut p.launches {
        l.args.iter_mut().for_each(shift);
        shift(&mut l.out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use kiln_dialect::interp::Tensor;
    use kiln_dialect::kernel::{Binary, Buffer, Kernel, Launch, Ty};
    use kiln_dialect::{DType, Dim, Shape};

    use super::*;
    use crate::lower::run_program;

    fn buf(name: &str, shape: &[u64]) -> Buffer {
        Buffer {
            name: name.into(),
            dtype: DType::F32,
            shape: Shape(shape.iter().map(|&d| Dim::Static(d)).collect()),
        }
    }

    fn map(inputs: Vec<Buffer>, output: Buffer, expr: Expr) -> Kernel {
        Kernel {
            name: format!("k_{}", output.name),
            inputs,
            output,
            dims: vec![],
            float: Ty::F32,
            body: Body::Map { expr },
        }
    }

    /// `w` (a weight) copied at bind time to `c` by `copy` (an index map of
    /// `c`'s variables), then `y = c * 2 + x`: the program, and `c`'s
    /// shape.
    fn program(copy: Vec<Expr>, c_shape: &[u64], c_is_output: bool) -> Program {
        let v = |i: u32| Expr::Var(Var(i));
        let (w, c, x, y) = (
            buf("w", &[3, 4]),
            buf("c", c_shape),
            buf("x", c_shape),
            buf("y", c_shape),
        );
        let copy = map(vec![w.clone()], c.clone(), Expr::load(0, copy));
        let body = Expr::bin(
            Binary::Add,
            Expr::bin(
                Binary::Mul,
                Expr::load(0, vec![v(0), v(1)]),
                Expr::Float(2.0),
            ),
            Expr::load(1, vec![v(0), v(1)]),
        );
        let use_it = map(vec![c.clone(), x.clone()], y.clone(), body);
        let mut outputs = vec![("y".to_string(), 3)];
        if c_is_output {
            outputs.push(("c".to_string(), 1));
        }
        Program {
            name: "p".into(),
            buffers: vec![w, c, x, y],
            inputs: vec![2],
            weights: vec![0],
            constants: vec![],
            outputs,
            dims: vec![],
            launches: vec![
                Launch {
                    kernel: copy,
                    args: vec![0],
                    out: 1,
                    bind_time: true,
                },
                Launch {
                    kernel: use_it,
                    args: vec![1, 2],
                    out: 3,
                    bind_time: false,
                },
            ],
        }
    }

    fn run(p: &Program) -> Vec<(String, Tensor)> {
        let vals = |n: usize, s: f64| (0..n).map(|i| s * (i as f64 - 5.5)).collect::<Vec<_>>();
        let x_shape: Vec<usize> = p.buffers[p.inputs[0]]
            .shape
            .as_static()
            .unwrap()
            .iter()
            .map(|&d| d as usize)
            .collect();
        let bindings = HashMap::from([
            (
                "w".to_string(),
                Tensor::new(DType::F32, &[3, 4], vals(12, 0.25)),
            ),
            (
                "x".to_string(),
                Tensor::new(DType::F32, &x_shape, vals(12, -0.5)),
            ),
        ]);
        run_program(p, &bindings).unwrap()
    }

    /// The identity copy goes, its reader reads the weight, its buffer is
    /// dropped and the others renumbered, and the program computes what it
    /// did (hand-checked element: y[1, 2] = 2 * w[1, 2] + x[1, 2]).
    #[test]
    fn identity_copies_are_forwarded() {
        let v = |i: u32| Expr::Var(Var(i));
        let p = program(vec![v(0), v(1)], &[3, 4], false);
        let want = run(&p);
        let mut q = p.clone();
        assert_eq!(forward_identity_copies(&mut q), 1);
        assert_eq!(q.launches.len(), 1);
        assert_eq!(q.buffers.len(), 3);
        assert_eq!(q.launches[0].args, vec![0, 1]);
        assert_eq!(
            (q.inputs.clone(), q.outputs[0].1, q.launches[0].out),
            (vec![1], 2, 2)
        );
        let got = run(&q);
        assert_eq!(got, want);
        // w[1, 2] = 0.25 * (6 - 5.5), x[1, 2] = -0.5 * (6 - 5.5)
        assert_eq!(got[0].1.data[6], 2.0 * 0.125 - 0.25);
    }

    /// A copy that moves elements (a transpose) and a copy that is a
    /// program output stay.
    #[test]
    fn other_copies_stay() {
        let v = |i: u32| Expr::Var(Var(i));
        let mut t = program(vec![v(1), v(0)], &[4, 3], false);
        assert_eq!(forward_identity_copies(&mut t), 0);
        let mut o = program(vec![v(0), v(1)], &[3, 4], true);
        assert_eq!(forward_identity_copies(&mut o), 0);
        assert_eq!(o.launches.len(), 2);
    }
}
