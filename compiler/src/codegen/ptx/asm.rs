//! A PTX instruction buffer: virtual registers by class, unique labels, and
//! the register declarations of everything allocated.

use std::fmt::Write;

/// A register class of the PTX virtual register file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// `.pred`
    P,
    /// `.b16`
    H,
    /// `.b32`
    R,
    /// `.b64`
    D,
    /// `.f32`
    F,
    /// `.f64`
    Fd,
}

const CLASSES: [(Class, &str, &str); 6] = [
    (Class::P, ".pred", "%p"),
    (Class::H, ".b16", "%h"),
    (Class::R, ".b32", "%r"),
    (Class::D, ".b64", "%rd"),
    (Class::F, ".f32", "%f"),
    (Class::Fd, ".f64", "%fd"),
];

fn slot(c: Class) -> usize {
    match c {
        Class::P => 0,
        Class::H => 1,
        Class::R => 2,
        Class::D => 3,
        Class::F => 4,
        Class::Fd => 5,
    }
}

/// The body of one entry being written.
#[derive(Default)]
pub(super) struct Asm {
    body: String,
    counts: [u32; 6],
    labels: u32,
}

impl Asm {
    /// A fresh register of class `c`.
    pub fn reg(&mut self, c: Class) -> String {
        let i = slot(c);
        let n = self.counts[i];
        self.counts[i] += 1;
        format!("{}{n}", CLASSES[i].2)
    }

    /// Appends one instruction (without its `;`).
    pub fn ins(&mut self, text: impl AsRef<str>) {
        self.body.push('\t');
        self.body.push_str(text.as_ref());
        self.body.push_str(";\n");
    }

    /// A fresh label name containing `hint`.
    pub fn label(&mut self, hint: &str) -> String {
        self.labels += 1;
        format!("$L_{hint}_{}", self.labels)
    }

    /// Places `label` here.
    pub fn place(&mut self, label: &str) {
        let _ = writeln!(self.body, "{label}:");
    }

    /// The register declarations followed by the instructions.
    pub fn finish(self) -> String {
        let mut s = String::new();
        for (c, ty, prefix) in CLASSES {
            let n = self.counts[slot(c)];
            if n > 0 {
                let _ = writeln!(s, "\t.reg {ty} {prefix}<{n}>;");
            }
        }
        s.push_str(&self.body);
        s
    }
}

/// An f32 immediate in PTX's exact hex form.
pub(super) fn f32_imm(x: f64) -> String {
    format!("0f{:08X}", (x as f32).to_bits())
}

/// An f64 immediate in PTX's exact hex form.
pub(super) fn f64_imm(x: f64) -> String {
    format!("0d{:016X}", x.to_bits())
}
