//! The structural checks of a program before it runs: buffer indices,
//! roles, argument types against the kernels' declarations, and that every
//! launch reads only what exists by then.

use kiln_dialect::Shape;
use kiln_dialect::kernel::Program;

use super::executor::RunError;

/// Where a buffer's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Input,
    Weight,
    Constant,
    BindTime,
    RunTime,
    /// Neither bound nor written: no launch reads it and it is no output.
    Unused,
}

/// Checks the program's structure; returns the origin of every buffer.
pub(crate) fn check_program(p: &Program, kernels: usize) -> Result<Vec<Origin>, RunError> {
    let n = p.buffers.len();
    if kernels != p.launches.len() {
        return Err(invalid(format!(
            "{} launches but {kernels} compiled kernels",
            p.launches.len()
        )));
    }
    let index = |b: usize, what: &str| -> Result<usize, RunError> {
        if b < n {
            Ok(b)
        } else {
            Err(invalid(format!("{what} refers to buffer {b} of {n}")))
        }
    };
    let mut origins: Vec<Option<Origin>> = vec![None; n];
    let assign = |origins: &mut Vec<Option<Origin>>, b: usize, o: Origin, what: &str| {
        let b = index(b, what)?;
        if let Some(prev) = origins[b] {
            return Err(invalid(format!(
                "buffer `{}` is both {prev:?} and {o:?} ({what})",
                p.buffers[b].name
            )));
        }
        origins[b] = Some(o);
        Ok(())
    };
    for &b in &p.inputs {
        assign(&mut origins, b, Origin::Input, "an input")?;
    }
    for &b in &p.weights {
        assign(&mut origins, b, Origin::Weight, "a weight")?;
    }
    for (b, _) in &p.constants {
        assign(&mut origins, *b, Origin::Constant, "a constant")?;
    }
    for (i, launch) in p.launches.iter().enumerate() {
        let what = format!("launch {i} (`{}`)", launch.kernel.name);
        if launch.args.len() != launch.kernel.inputs.len() {
            return Err(invalid(format!(
                "{what} passes {} arguments to a kernel of {} inputs",
                launch.args.len(),
                launch.kernel.inputs.len()
            )));
        }
        let declared = launch
            .kernel
            .inputs
            .iter()
            .chain(std::iter::once(&launch.kernel.output));
        for (&b, decl) in launch
            .args
            .iter()
            .chain(std::iter::once(&launch.out))
            .zip(declared)
        {
            let buffer = &p.buffers[index(b, &what)?];
            if buffer.dtype != decl.dtype || !same_elements(&buffer.shape, &decl.shape) {
                return Err(invalid(format!(
                    "{what}: buffer `{}` is {}{} but the kernel declares {}{}",
                    buffer.name, buffer.dtype, buffer.shape, decl.dtype, decl.shape
                )));
            }
        }
        if launch.args.contains(&launch.out) {
            return Err(invalid(format!("{what} reads the buffer it writes")));
        }
        for &a in &launch.args {
            match origins[a] {
                None => {
                    return Err(invalid(format!(
                        "{what} reads `{}` before anything writes it",
                        p.buffers[a].name
                    )));
                }
                Some(Origin::Input | Origin::RunTime) if launch.bind_time => {
                    return Err(invalid(format!(
                        "bind-time {what} reads `{}`, which is known only at run time",
                        p.buffers[a].name
                    )));
                }
                Some(_) => {}
            }
        }
        let o = if launch.bind_time {
            Origin::BindTime
        } else {
            Origin::RunTime
        };
        assign(&mut origins, launch.out, o, &what)?;
    }
    for (name, b) in &p.outputs {
        let b = index(*b, "an output")?;
        if origins[b].is_none() {
            return Err(invalid(format!(
                "output `{name}` is buffer `{}`, which nothing writes",
                p.buffers[b].name
            )));
        }
    }
    Ok(origins
        .into_iter()
        .map(|o| o.unwrap_or(Origin::Unused))
        .collect())
}

fn invalid(message: String) -> RunError {
    RunError::InvalidProgram(message)
}

/// Whether a kernel may declare `buffer` as `decl`: a row-major view of the
/// same elements (equal products of the static dims and the same symbolic
/// dims), the shape itself included.
fn same_elements(buffer: &Shape, decl: &Shape) -> bool {
    let parts = |s: &Shape| {
        let mut syms: Vec<String> =
            s.0.iter()
                .filter_map(|d| match d {
                    kiln_dialect::Dim::Sym(x) => Some(x.to_string()),
                    kiln_dialect::Dim::Static(_) => None,
                })
                .collect();
        syms.sort();
        let product =
            s.0.iter()
                .filter_map(|d| d.as_static())
                .try_fold(1u64, |a, d| a.checked_mul(d));
        (product, syms)
    };
    buffer == decl || parts(buffer) == parts(decl)
}

#[cfg(test)]
mod tests {
    use super::same_elements;
    use kiln_dialect::{Dim, Shape};

    fn shape(dims: &[&str]) -> Shape {
        Shape(
            dims.iter()
                .map(|d| {
                    d.parse()
                        .map_or_else(|_| Dim::Sym((*d).into()), Dim::Static)
                })
                .collect(),
        )
    }

    #[test]
    fn a_kernel_may_view_a_buffer_with_the_same_elements_only() {
        let b = shape(&["n", "24", "56", "56"]);
        assert!(same_elements(&b, &b));
        assert!(same_elements(&b, &shape(&["n", "24", "3136"])));
        assert!(!same_elements(&b, &shape(&["n", "24", "3135"])));
        assert!(!same_elements(&b, &shape(&["m", "24", "3136"])));
        assert!(!same_elements(&b, &shape(&["n", "n", "24", "3136"])));
    }
}
