//! ONNX ops onto dialect ops, one family per file. [`convert`] is the
//! dispatch: an op type it does not list is an
//! `unsupported ONNX op <Op> (node <name>, opset <n>)` error.

mod elementwise;
mod movement;
mod nn;
mod quant;
mod reduce;
mod transformer;

use super::error::OnnxError;
use super::importer::{Cx, Val};
use super::node::NodeCx;

/// The ONNX op types kiln imports (the default domain), in the order of
/// [`convert`]'s dispatch; docs/onnx.md lists their limits.
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Attention",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "DynamicQuantizeLinear",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LRN",
    "MatMul",
    "MatMulInteger",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "QLinearMatMul",
    "QuantizeLinear",
    "Range",
    "Reciprocal",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "RMSNormalization",
    "Round",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Maps one node; returns one value per ONNX output (extra entries for
/// outputs the node does not name are ignored).
pub fn convert(cx: &mut Cx, n: &NodeCx) -> Result<Vec<Val>, OnnxError> {
    let one = |v| Ok(vec![Val::Graph(v)]);
    if let Some(v) = movement::on_dims(cx, n)? {
        return Ok(vec![v]);
    }
    match n.op {
        "Identity" => {
            n.only(&[])?;
            let v = cx
                .get(n, 0)?
                .ok_or_else(|| n.error("input 0 is required", cx.shapes(n)))?;
            Ok(vec![v])
        }
        "Abs" | "Neg" | "Exp" | "Log" | "Sqrt" | "Reciprocal" | "Tanh" | "Sigmoid" | "Relu"
        | "Erf" | "Sin" | "Cos" | "Floor" | "Ceil" | "Round" | "Sign" | "Not" | "Softplus"
        | "Softsign" | "HardSwish" | "LeakyRelu" | "HardSigmoid" | "Elu" | "Gelu" => {
            one(elementwise::unary(cx, n)?)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "LessOrEqual" | "Greater"
        | "GreaterOrEqual" | "And" | "Or" => one(elementwise::binary(cx, n)?),
        "Sum" | "Max" | "Min" | "Mean" => one(elementwise::variadic(cx, n)?),
        "Where" => one(elementwise::where_(cx, n)?),
        "Cast" => one(elementwise::cast(cx, n)?),
        "Clip" => one(elementwise::clip(cx, n)?),
        "Dropout" => elementwise::dropout(cx, n),
        "Constant" => movement::constant(cx, n),
        "ConstantOfShape" => movement::constant_of_shape(cx, n),
        "Shape" => movement::shape(cx, n),
        "Size" => movement::size(cx, n),
        "Range" => movement::range(cx, n),
        "Reshape" => one(movement::reshape(cx, n)?),
        "Flatten" => one(movement::flatten(cx, n)?),
        "Transpose" => one(movement::transpose(cx, n)?),
        "Squeeze" => one(movement::squeeze(cx, n)?),
        "Unsqueeze" => one(movement::unsqueeze(cx, n)?),
        "Concat" => one(movement::concat(cx, n)?),
        "Split" => movement::split(cx, n),
        "Slice" => one(movement::slice(cx, n)?),
        "Gather" => one(movement::gather(cx, n)?),
        "Expand" => one(movement::expand(cx, n)?),
        "Tile" => one(movement::tile(cx, n)?),
        "Pad" => one(movement::pad(cx, n)?),
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
        | "ReduceSumSquare" => one(reduce::reduce(cx, n)?),
        "ArgMax" | "ArgMin" => one(reduce::arg(cx, n)?),
        "Softmax" | "LogSoftmax" => one(nn::softmax(cx, n)?),
        "MatMul" => one(nn::matmul(cx, n)?),
        "Gemm" => one(nn::gemm(cx, n)?),
        "Conv" => one(nn::conv(cx, n)?),
        "ConvTranspose" => one(nn::conv_transpose(cx, n)?),
        "MaxPool" | "AveragePool" => nn::pool(cx, n),
        "GlobalAveragePool" | "GlobalMaxPool" => one(nn::global_pool(cx, n)?),
        "BatchNormalization" => nn::batch_norm(cx, n),
        "InstanceNormalization" => one(nn::instance_norm(cx, n)?),
        "LayerNormalization" => nn::layer_norm(cx, n),
        "LRN" => one(nn::lrn(cx, n)?),
        "DequantizeLinear" => one(quant::dequantize(cx, n)?),
        "QuantizeLinear" => one(quant::quantize(cx, n)?),
        "DynamicQuantizeLinear" => Ok(quant::dynamic_quantize(cx, n)?
            .into_iter()
            .map(Val::Graph)
            .collect()),
        "MatMulInteger" => one(quant::matmul_integer(cx, n)?),
        "QLinearMatMul" => one(quant::qlinear_matmul(cx, n)?),
        "Attention" => transformer::attention(cx, n),
        "RMSNormalization" => one(transformer::rms_norm(cx, n)?),
        _ => Err(n.unsupported("")),
    }
}
