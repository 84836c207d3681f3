//! One ONNX node as the importer sees it: its name for messages, its
//! inputs (an empty name is an absent optional input), and typed access to
//! its attributes with the defaults the op's opset gives.

use super::error::OnnxError;
use super::proto::{self, AttributeProto, attribute_proto::AttributeType};

/// A node with the opset of its domain.
pub struct NodeCx<'a> {
    pub proto: &'a proto::NodeProto,
    /// The node's name, or `#<index>` when it has none.
    pub name: String,
    pub op: &'a str,
    pub opset: i64,
}

impl<'a> NodeCx<'a> {
    /// The node at `index` of its graph.
    pub fn new(proto: &'a proto::NodeProto, index: usize, opset: i64) -> NodeCx<'a> {
        let name = match proto.name() {
            "" => format!("#{index}"),
            n => n.to_string(),
        };
        NodeCx {
            proto,
            name,
            op: proto.op_type(),
            opset,
        }
    }

    /// The name of input `i`, or `None` when absent (missing or empty).
    pub fn input(&self, i: usize) -> Option<&'a str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The number of inputs listed (absent ones included).
    pub fn input_count(&self) -> usize {
        self.proto.input.len()
    }

    /// The name of output `i`, or `None` when absent or not wanted.
    pub fn output(&self, i: usize) -> Option<&'a str> {
        self.proto
            .output
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// An unsupported attribute value (or a feature of the op) on this node.
    pub fn unsupported(&self, detail: impl Into<String>) -> OnnxError {
        OnnxError::Unsupported {
            op: self.op.to_string(),
            node: self.name.clone(),
            opset: self.opset,
            detail: detail.into(),
        }
    }

    /// A malformed node; `shapes` describes its inputs.
    pub fn error(&self, message: impl Into<String>, shapes: String) -> OnnxError {
        OnnxError::Node {
            op: self.op.to_string(),
            node: self.name.clone(),
            opset: self.opset,
            message: message.into(),
            shapes,
        }
    }

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name() == name)
    }

    /// Whether the attribute is given.
    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    fn wrong(&self, name: &str, want: &str) -> OnnxError {
        self.error(
            format!("attribute `{name}` must be {want}"),
            String::from("-"),
        )
    }

    fn typed(
        &self,
        name: &str,
        ty: AttributeType,
        want: &str,
    ) -> Result<Option<&'a AttributeProto>, OnnxError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) => {
                // IR versions before 2 had no type field: accept an absent one.
                if a.r#type.is_some() && a.r#type() != ty {
                    return Err(self.wrong(name, want));
                }
                Ok(Some(a))
            }
        }
    }

    /// An integer attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> Result<i64, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Int, "an integer")?
            .map_or(default, |a| a.i()))
    }

    /// An integer attribute that may be absent.
    pub fn int_opt(&self, name: &str) -> Result<Option<i64>, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Int, "an integer")?
            .map(|a| a.i()))
    }

    /// A float attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> Result<f32, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Float, "a float")?
            .map_or(default, |a| a.f()))
    }

    /// A float attribute that may be absent.
    pub fn float_opt(&self, name: &str) -> Result<Option<f32>, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Float, "a float")?
            .map(|a| a.f()))
    }

    /// A list-of-integers attribute, or `None`.
    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Ints, "a list of integers")?
            .map(|a| a.ints.clone()))
    }

    /// A list-of-floats attribute, or `None`.
    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Floats, "a list of floats")?
            .map(|a| a.floats.clone()))
    }

    /// A string attribute, or `default`.
    pub fn string(&self, name: &str, default: &str) -> Result<String, OnnxError> {
        match self.typed(name, AttributeType::String, "a string")? {
            None => Ok(default.to_string()),
            Some(a) => {
                String::from_utf8(a.s().to_vec()).map_err(|_| self.wrong(name, "UTF-8 text"))
            }
        }
    }

    /// A tensor attribute, or `None`.
    pub fn tensor(&self, name: &str) -> Result<Option<&'a proto::TensorProto>, OnnxError> {
        Ok(self
            .typed(name, AttributeType::Tensor, "a tensor")?
            .and_then(|a| a.t.as_ref()))
    }

    /// Fails on any attribute not in `known` (so an attribute kiln would
    /// ignore is reported, not silently dropped).
    pub fn only(&self, known: &[&str]) -> Result<(), OnnxError> {
        for a in &self.proto.attribute {
            if !known.contains(&a.name()) {
                return Err(self.unsupported(format!("attribute `{}` is not supported", a.name())));
            }
        }
        Ok(())
    }
}
