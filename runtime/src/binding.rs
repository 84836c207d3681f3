//! What both executors check before they run anything: weights and inputs
//! against the program's buffers (names, element types, shapes, byte
//! counts), the symbolic dims their shapes bind, and the dims vector each
//! launch receives. Every mismatch is a [`RunError`] naming the tensor.

use std::collections::HashMap;

use kiln_dialect::kernel::Program;
use kiln_dialect::{DType, Dim, Shape};

use crate::HostTensor;
use crate::cpu::RunError;

/// Bound dims: value, and where it was bound (for error messages).
pub(crate) type Bindings = HashMap<String, (usize, String)>;

/// Every bound dim and its value, sorted: the key of a per-binding cache.
pub(crate) type DimValues = Vec<(String, usize)>;

/// A shape as `[2, 3]`.
pub(crate) fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Bytes of `shape` elements of `dtype`, `None` on overflow.
pub(crate) fn byte_size(dtype: DType, shape: &[usize]) -> Option<usize> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    Some(n.checked_mul(dtype.bits() as usize)?.div_ceil(8))
}

/// The cache key of a binding: every bound dim, not only `Program::dims`,
/// so that a plan is never reused at other sizes.
pub(crate) fn dim_values(bindings: &Bindings) -> DimValues {
    let mut key: DimValues = bindings.iter().map(|(d, (v, _))| (d.clone(), *v)).collect();
    key.sort_unstable();
    key
}

/// Binds the symbolic dims of `declared` from `actual`, checking static
/// sizes; `what` names the tensor in errors (`input x`, `weight w`).
pub(crate) fn bind_shape(
    bindings: &mut Bindings,
    name: &str,
    what: &str,
    declared: &Shape,
    actual: &[usize],
) -> Result<(), RunError> {
    for (axis, (dim, &size)) in declared.dims().iter().zip(actual).enumerate() {
        match dim {
            Dim::Static(n) => {
                if *n as usize != size || *n > usize::MAX as u64 {
                    return Err(RunError::InputShape {
                        name: name.to_string(),
                        axis,
                        expected: *n as usize,
                        found: size,
                    });
                }
            }
            Dim::Sym(sym) => {
                let source = format!("{what} `{name}` axis {axis}");
                match bindings.get(sym) {
                    Some((value, first)) if *value != size => {
                        return Err(RunError::DimConflict {
                            dim: sym.clone(),
                            first: first.clone(),
                            first_value: *value,
                            second: source,
                            second_value: size,
                        });
                    }
                    Some(_) => {}
                    None => {
                        bindings.insert(sym.clone(), (size, source));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The concrete shape of a declared shape under the bindings.
pub(crate) fn resolve(
    shape: &Shape,
    bindings: &Bindings,
    needed_by: &str,
) -> Result<Vec<usize>, RunError> {
    shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Static(n) => usize::try_from(*n).map_err(|_| RunError::SizeOverflow {
                name: needed_by.to_string(),
            }),
            Dim::Sym(s) => bindings
                .get(s)
                .map(|(v, _)| *v)
                .ok_or_else(|| RunError::UnboundDim {
                    dim: s.clone(),
                    needed_by: needed_by.to_string(),
                }),
        })
        .collect()
}

/// Checks that a tensor's byte count matches its shape and element type.
pub(crate) fn check_bytes(name: &str, t: &HostTensor) -> Result<(), RunError> {
    let expected = byte_size(t.dtype, &t.shape).ok_or_else(|| RunError::SizeOverflow {
        name: name.to_string(),
    })?;
    if t.data.len() != expected {
        return Err(RunError::TensorSize {
            name: name.to_string(),
            message: format!(
                "shape {} of {} needs {expected} bytes, found {}",
                shape_text(&t.shape),
                t.dtype,
                t.data.len()
            ),
        });
    }
    Ok(())
}

/// Checks every weight of the program (present, element type, shape, byte
/// count) and returns the dims their shapes bind. Tensors the program does
/// not use are ignored.
pub(crate) fn check_weights(
    program: &Program,
    weights: &HashMap<String, HostTensor>,
) -> Result<Bindings, RunError> {
    let mut dims: Bindings = HashMap::new();
    for &b in &program.weights {
        let buffer = &program.buffers[b];
        let name = &buffer.name;
        let t = weights
            .get(name)
            .ok_or_else(|| RunError::MissingWeight { name: name.clone() })?;
        if t.dtype != buffer.dtype {
            return Err(RunError::WeightDType {
                name: name.clone(),
                expected: buffer.dtype,
                found: t.dtype,
            });
        }
        let shape_error = || RunError::WeightShape {
            name: name.clone(),
            expected: buffer.shape.to_string(),
            found: shape_text(&t.shape),
        };
        if t.shape.len() != buffer.shape.rank() {
            return Err(shape_error());
        }
        match bind_shape(&mut dims, name, "weight", &buffer.shape, &t.shape) {
            Err(RunError::InputShape { .. }) => return Err(shape_error()),
            other => other?,
        }
        check_bytes(name, t)?;
    }
    Ok(dims)
}

/// Checks the inputs (no unknown names, none missing, element type, rank,
/// static sizes, byte count) and binds the dims their shapes name, starting
/// from those the weights bound.
pub(crate) fn check_inputs(
    program: &Program,
    weight_dims: &Bindings,
    inputs: &HashMap<String, HostTensor>,
) -> Result<Bindings, RunError> {
    let names: Vec<&str> = program
        .inputs
        .iter()
        .map(|&b| program.buffers[b].name.as_str())
        .collect();
    let mut given: Vec<&String> = inputs.keys().collect();
    given.sort();
    for name in given {
        if !names.contains(&name.as_str()) {
            return Err(RunError::UnknownInput {
                name: name.clone(),
                known: names.join(", "),
            });
        }
    }
    let mut bindings = weight_dims.clone();
    for &b in &program.inputs {
        let buffer = &program.buffers[b];
        let name = &buffer.name;
        let t = inputs
            .get(name)
            .ok_or_else(|| RunError::MissingInput { name: name.clone() })?;
        if t.dtype != buffer.dtype {
            return Err(RunError::InputDType {
                name: name.clone(),
                expected: buffer.dtype,
                found: t.dtype,
            });
        }
        if t.shape.len() != buffer.shape.rank() {
            return Err(RunError::InputRank {
                name: name.clone(),
                shape: buffer.shape.to_string(),
                expected: buffer.shape.rank(),
                found: t.shape.len(),
            });
        }
        bind_shape(&mut bindings, name, "input", &buffer.shape, &t.shape)?;
        check_bytes(name, t)?;
    }
    Ok(bindings)
}

/// The concrete shape launch `i`'s kernel writes, under the bindings: the
/// shape its work units count. The output buffer may hold the same
/// elements under another shape (a kernel writing `[n, 144, 3136]` into a
/// buffer of `[n, 144, 56, 56]`), which would divide into other tiles or
/// rows.
pub(crate) fn kernel_output_shape(
    program: &Program,
    i: usize,
    bindings: &Bindings,
) -> Result<Vec<usize>, RunError> {
    let kernel = &program.launches[i].kernel;
    resolve(
        &kernel.output.shape,
        bindings,
        &format!("the output of kernel `{}`", kernel.name),
    )
}

/// The shape of launch `i`'s kernel input `input` (as the kernel
/// declares it: a view of the argument's elements) under the bindings.
pub(crate) fn kernel_input_shape(
    program: &Program,
    i: usize,
    input: usize,
    bindings: &Bindings,
) -> Result<Vec<usize>, RunError> {
    let kernel = &program.launches[i].kernel;
    let Some(b) = kernel.inputs.get(input) else {
        return Err(RunError::InvalidProgram(format!(
            "kernel `{}` has no input {input} (a tensor map names it)",
            kernel.name
        )));
    };
    resolve(
        &b.shape,
        bindings,
        &format!("input {input} of kernel `{}`", kernel.name),
    )
}

/// Each tensor map of launch `i` (`maps`, its PTX kernel's) with the
/// address of the argument it describes (from `pointers`, the launch's
/// arguments) and that argument's shape under the bindings.
pub(crate) fn tensor_map_args(
    program: &Program,
    i: usize,
    maps: &[crate::cuda::TensorMapSpec],
    pointers: &[u64],
    bindings: &Bindings,
) -> Result<Vec<(crate::cuda::TensorMapSpec, u64, Vec<usize>)>, RunError> {
    maps.iter()
        .map(|spec| {
            let a = spec.arg as usize;
            let shape = kernel_input_shape(program, i, a, bindings)?;
            let base = *pointers.get(a).ok_or_else(|| {
                RunError::InvalidProgram(format!(
                    "launch {i} has no argument {a} for its tensor map"
                ))
            })?;
            Ok((*spec, base, shape))
        })
        .collect()
}

/// The values of launch `i`'s `Kernel::dims` under the bindings.
pub(crate) fn kernel_dims(
    program: &Program,
    i: usize,
    bindings: &Bindings,
) -> Result<Vec<i64>, RunError> {
    let kernel = &program.launches[i].kernel;
    kernel
        .dims
        .iter()
        .map(|d| match bindings.get(d) {
            Some((v, _)) => {
                i64::try_from(*v).map_err(|_| RunError::SizeOverflow { name: d.clone() })
            }
            None => Err(RunError::UnboundDim {
                dim: d.clone(),
                needed_by: format!("kernel `{}`", kernel.name),
            }),
        })
        .collect()
}
