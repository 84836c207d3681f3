//! Reading and writing elements in their storage types: decoding every
//! element type to the compute types, and encoding results with
//! round-to-nearest-even (bf16 and f16 from f32 inline, the rarer encodings
//! through the runtime's exact `kiln_encode`).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use kiln_dialect::DType;
use kiln_dialect::kernel::Expr;
use kiln_runtime::cpu::jit::dtype_id;

use super::CodegenError;
use super::expr::{Emitter, T, load_type, mem};

/// Field widths of a small binary float format.
struct Mini {
    exp: u32,
    man: u32,
    bias: i64,
    /// IEEE specials (all-ones exponent is inf/NaN) or E4M3FN (only the
    /// all-ones magnitude is NaN) or none.
    ieee: bool,
    nan_only: bool,
}

fn mini(d: DType) -> Option<Mini> {
    let m = |exp, man, bias, ieee, nan_only| {
        Some(Mini {
            exp,
            man,
            bias,
            ieee,
            nan_only,
        })
    };
    match d {
        DType::F16 => m(5, 10, 15, true, false),
        DType::BF16 => m(8, 7, 127, true, false),
        DType::F8E4M3 => m(4, 3, 7, false, true),
        DType::F8E5M2 => m(5, 2, 15, true, false),
        DType::F4E2M1 => m(2, 1, 1, false, false),
        _ => None,
    }
}

impl Emitter<'_, '_> {
    /// A load of `input` at `index`, with its guard.
    pub fn load(
        &mut self,
        e: &Expr,
        input: usize,
        index: &[Expr],
        guard: Option<&Expr>,
    ) -> Result<(Value, T), CodegenError> {
        let dtype = match self.k.inputs.get(input) {
            Some(b) => b.dtype,
            None => return Err(self.type_err(e, format!("no input {input}"))),
        };
        if index.len() != self.shapes[input].len() {
            return Err(self.type_err(e, "the index's rank is not the input's"));
        }
        let t = load_type(dtype);
        let Some(g) = guard else {
            return self.load_at(e, input, index).map(|v| (v, t));
        };
        let (g, gt) = self.emit(g)?;
        if gt != T::B {
            return Err(self.type_err(e, "the guard is not a bool"));
        }
        let then = self.b.create_block();
        let merge = self.b.create_block();
        let ty = self.clif_ty(t);
        self.b.append_block_param(merge, ty);
        let zero = match t {
            T::F => self.fconst(0.0),
            T::I => self.iconst(0),
            T::B => self.b.ins().iconst(types::I8, 0),
        };
        self.b
            .ins()
            .brif(g, then, &[], merge, &super::expr::args(&[zero]));
        self.b.switch_to_block(then);
        self.push_scope();
        let v = self.load_at(e, input, index);
        self.pop_scope();
        let v = v?;
        self.b.ins().jump(merge, &super::expr::args(&[v]));
        self.b.switch_to_block(merge);
        Ok((self.b.block_params(merge)[0], t))
    }

    /// The flat element index of `index` in `input`.
    pub(super) fn flat_index(
        &mut self,
        e: &Expr,
        input: usize,
        index: &[Expr],
    ) -> Result<Value, CodegenError> {
        let mut flat = None;
        for (a, ie) in index.iter().enumerate() {
            let (v, t) = self.emit(ie)?;
            if t != T::I {
                return Err(self.type_err(e, "an index is not an integer"));
            }
            let term = self.b.ins().imul(v, self.strides[input][a]);
            flat = Some(match flat {
                None => term,
                Some(f) => self.b.ins().iadd(f, term),
            });
        }
        Ok(flat.unwrap_or_else(|| self.iconst(0)))
    }

    fn load_at(&mut self, e: &Expr, input: usize, index: &[Expr]) -> Result<Value, CodegenError> {
        let flat = self.flat_index(e, input, index)?;
        let dtype = self.k.inputs[input].dtype;
        let base = self.bases[input];
        Ok(self.decode(dtype, base, flat))
    }

    /// The address of byte-sized element `flat` of `size` bytes.
    fn addr(&mut self, base: Value, flat: Value, size: u32) -> Value {
        let off = if size == 1 {
            flat
        } else {
            self.b
                .ins()
                .ishl_imm_s(flat, i64::from(size.trailing_zeros()))
        };
        self.b.ins().iadd(base, off)
    }

    /// Decodes element `flat` of a `dtype` tensor at `base` to its compute
    /// type.
    pub fn decode(&mut self, dtype: DType, base: Value, flat: Value) -> Value {
        let m = mem();
        let i64t = types::I64;
        match dtype {
            DType::F64 => {
                let a = self.addr(base, flat, 8);
                let x = self.b.ins().load(types::F64, m, a, 0);
                self.compute_of_f64(x)
            }
            DType::F32 => {
                let a = self.addr(base, flat, 4);
                let x = self.b.ins().load(types::F32, m, a, 0);
                self.compute_of_f32(x)
            }
            DType::BF16 => {
                let a = self.addr(base, flat, 2);
                let c = self.b.ins().uload16(types::I32, m, a, 0);
                let bits = self.b.ins().ishl_imm_s(c, 16);
                let x = self.b.ins().bitcast(types::F32, MemFlagsData::new(), bits);
                self.compute_of_f32(x)
            }
            DType::F16 => {
                let a = self.addr(base, flat, 2);
                let c = self.b.ins().uload16(types::I32, m, a, 0);
                let x = self.decode_mini(dtype, c);
                self.compute_of_f32(x)
            }
            DType::F8E4M3 | DType::F8E5M2 => {
                let a = self.addr(base, flat, 1);
                let c = self.b.ins().uload8(types::I32, m, a, 0);
                let x = self.decode_mini(dtype, c);
                self.compute_of_f32(x)
            }
            DType::E8M0 => {
                let a = self.addr(base, flat, 1);
                let c = self.b.ins().uload8(i64t, m, a, 0);
                let e = self.b.ins().iadd_imm_s(c, 1023 - 127);
                let bits = self.b.ins().ishl_imm_s(e, 52);
                let x = self.b.ins().bitcast(types::F64, MemFlagsData::new(), bits);
                let nan = self.b.ins().f64const(f64::NAN);
                let is_nan = self.b.ins().icmp_imm_s(IntCC::Equal, c, 0xFF);
                let x = self.b.ins().select(is_nan, nan, x);
                self.compute_of_f64(x)
            }
            DType::I64 => {
                let a = self.addr(base, flat, 8);
                self.b.ins().load(i64t, m, a, 0)
            }
            DType::I32 => {
                let a = self.addr(base, flat, 4);
                self.b.ins().sload32(m, a, 0)
            }
            DType::I8 => {
                let a = self.addr(base, flat, 1);
                self.b.ins().sload8(i64t, m, a, 0)
            }
            DType::U8 => {
                let a = self.addr(base, flat, 1);
                self.b.ins().uload8(i64t, m, a, 0)
            }
            DType::Bool => {
                let a = self.addr(base, flat, 1);
                let c = self.b.ins().load(types::I8, m, a, 0);
                self.b.ins().icmp_imm_s(IntCC::NotEqual, c, 0)
            }
            DType::I4 | DType::U4 | DType::I3 | DType::I6 | DType::F4E2M1 => {
                let code = self.load_bits(dtype.bits(), base, flat);
                match dtype {
                    DType::F4E2M1 => {
                        let c = self.b.ins().ireduce(types::I32, code);
                        let x = self.decode_mini(dtype, c);
                        self.compute_of_f32(x)
                    }
                    DType::U4 => code,
                    _ => {
                        let shift = i64::from(64 - dtype.bits());
                        let up = self.b.ins().ishl_imm_s(code, shift);
                        self.b.ins().sshr_imm_s(up, shift)
                    }
                }
            }
        }
    }

    /// The `bits`-bit code of element `flat` of a packed (LSB-first)
    /// sub-byte tensor, zero-extended to i64. Reads only bytes the element
    /// touches.
    fn load_bits(&mut self, bits: u32, base: Value, flat: Value) -> Value {
        let m = mem();
        let pos = self.b.ins().imul_imm_s(flat, i64::from(bits));
        let byte = self.b.ins().ushr_imm_s(pos, 3);
        let sh = self.b.ins().band_imm_s(pos, 7);
        let a0 = self.b.ins().iadd(base, byte);
        let b0 = self.b.ins().uload8(types::I64, m, a0, 0);
        let w = if 8 % bits == 0 {
            b0
        } else {
            // An element that straddles two bytes reads the next one too;
            // one that does not reads its own byte twice.
            let end = self.b.ins().iadd_imm_s(sh, i64::from(bits));
            let straddles = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, end, 8);
            let a1 = self.b.ins().iadd_imm_s(a0, 1);
            let a1 = self.b.ins().select(straddles, a1, a0);
            let b1 = self.b.ins().uload8(types::I64, m, a1, 0);
            let hi = self.b.ins().ishl_imm_s(b1, 8);
            self.b.ins().bor(b0, hi)
        };
        let v = self.b.ins().ushr(w, sh);
        self.b.ins().band_imm_s(v, (1i64 << bits) - 1)
    }

    /// Decodes the code `c` (i32) of a small float format to f32, exactly.
    fn decode_mini(&mut self, d: DType, c: Value) -> Value {
        let Some(f) = mini(d) else {
            return self.b.ins().f32const(0.0);
        };
        let width = f.exp + f.man;
        let sign = self.b.ins().ushr_imm_s(c, i64::from(width));
        let sign = self.b.ins().band_imm_s(sign, 1);
        let sign = self.b.ins().ishl_imm_s(sign, 31);
        let mag = self.b.ins().band_imm_s(c, (1i64 << width) - 1);
        let exp = self.b.ins().ushr_imm_s(mag, i64::from(f.man));
        let man = self.b.ins().band_imm_s(mag, (1i64 << f.man) - 1);
        // normal: rebias the exponent, align the mantissa
        let e32 = self.b.ins().iadd_imm_s(exp, 127 - f.bias);
        let e32 = self.b.ins().ishl_imm_s(e32, 23);
        let m32 = self.b.ins().ishl_imm_s(man, i64::from(23 - f.man));
        let normal = self.b.ins().bor(e32, m32);
        // subnormal: man * 2^(1 - bias - man), exact in f32
        let mf = self.b.ins().fcvt_from_uint(types::F32, man);
        let scale = self
            .b
            .ins()
            .f32const(2f32.powi(1 - f.bias as i32 - f.man as i32));
        let sub = self.b.ins().fmul(mf, scale);
        let sub = self.b.ins().bitcast(types::I32, MemFlagsData::new(), sub);
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, exp, 0);
        let mut bits = self.b.ins().select(is_sub, sub, normal);
        if f.ieee {
            let all = (1i64 << f.exp) - 1;
            let special = self.b.ins().bor_imm_s(m32, 0x7F80_0000);
            let is_special = self.b.ins().icmp_imm_s(IntCC::Equal, exp, all);
            bits = self.b.ins().select(is_special, special, bits);
        }
        if f.nan_only {
            let nan = self.b.ins().iconst(types::I32, 0x7FC0_0000);
            let is_nan = self
                .b
                .ins()
                .icmp_imm_s(IntCC::Equal, mag, (1i64 << width) - 1);
            bits = self.b.ins().select(is_nan, nan, bits);
        }
        let bits = self.b.ins().bor(bits, sign);
        self.b.ins().bitcast(types::F32, MemFlagsData::new(), bits)
    }

    /// An f32 as the compute float.
    pub fn compute_of_f32(&mut self, x: Value) -> Value {
        if self.fty == types::F32 {
            x
        } else {
            self.b.ins().fpromote(types::F64, x)
        }
    }

    /// The bf16 or f16 code (i32) of the f32 `x`, rounded to nearest even
    /// with IEEE overflow to infinity and NaN as the canonical quiet NaN.
    fn encode_half(&mut self, d: DType, x: Value) -> Value {
        let u = self.b.ins().bitcast(types::I32, MemFlagsData::new(), x);
        let sign = self.b.ins().ushr_imm_s(u, 16);
        let sign = self.b.ins().band_imm_s(sign, 0x8000);
        let a = self.b.ins().band_imm_s(u, 0x7FFF_FFFF);
        let is_nan = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedGreaterThan, a, 0x7F80_0000);
        let code = if d == DType::BF16 {
            let lsb = self.b.ins().ushr_imm_s(a, 16);
            let lsb = self.b.ins().band_imm_s(lsb, 1);
            let r = self.b.ins().iadd_imm_s(a, 0x7FFF);
            let r = self.b.ins().iadd(r, lsb);
            let r = self.b.ins().ushr_imm_s(r, 16);
            let nan = self.b.ins().iconst(types::I32, 0x7FC0);
            self.b.ins().select(is_nan, nan, r)
        } else {
            // normal f16: rebias and round away 13 bits
            let r = self.b.ins().iadd_imm_s(a, -0x3800_0000);
            let lsb = self.b.ins().ushr_imm_s(r, 13);
            let lsb = self.b.ins().band_imm_s(lsb, 1);
            let r = self.b.ins().iadd_imm_s(r, 0xFFF);
            let r = self.b.ins().iadd(r, lsb);
            let normal = self.b.ins().ushr_imm_s(r, 13);
            // subnormal f16: |x| / 2^-24 rounded to an integer, ties to even
            let ax = self.b.ins().fabs(x);
            let s = self.b.ins().f32const(16_777_216.0);
            let q = self.b.ins().fmul(ax, s);
            let q = self.b.ins().nearest(q);
            let sub = self.b.ins().fcvt_to_uint_sat(types::I32, q);
            let is_normal =
                self.b
                    .ins()
                    .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, a, 0x3880_0000);
            let c = self.b.ins().select(is_normal, normal, sub);
            let inf = self.b.ins().iconst(types::I32, 0x7C00);
            let is_inf = self
                .b
                .ins()
                .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, a, 0x477F_F000);
            let c = self.b.ins().select(is_inf, inf, c);
            let nan = self.b.ins().iconst(types::I32, 0x7E00);
            self.b.ins().select(is_nan, nan, c)
        };
        self.b.ins().bor(code, sign)
    }

    /// `x` (compute float) rounded to the nearest value of `d`, as
    /// `numeric::round_to` does.
    pub fn round_float(&mut self, d: DType, x: Value) -> Value {
        match d {
            DType::F64 => x,
            DType::F32 => {
                if self.fty == types::F32 {
                    x
                } else {
                    let r = self.b.ins().fdemote(types::F32, x);
                    self.b.ins().fpromote(types::F64, r)
                }
            }
            DType::BF16 | DType::F16 if self.fty == types::F32 => {
                let c = self.encode_half(d, x);
                let y = if d == DType::BF16 {
                    let bits = self.b.ins().ishl_imm_s(c, 16);
                    self.b.ins().bitcast(types::F32, MemFlagsData::new(), bits)
                } else {
                    self.decode_mini(d, c)
                };
                self.compute_of_f32(y)
            }
            _ => {
                let x = self.f64_of_compute(x);
                let id = self.b.ins().iconst(types::I32, i64::from(dtype_id(d)));
                let y = self.call(
                    "kiln_round_to",
                    &[types::I32, types::F64],
                    types::F64,
                    &[id, x],
                );
                self.compute_of_f64(y)
            }
        }
    }

    /// Stores the value `(v, t)` as element `flat` of the output, encoded
    /// to the output's type as the evaluator's `store` does.
    pub fn store_out(
        &mut self,
        e: &Expr,
        flat: Value,
        (v, t): (Value, T),
    ) -> Result<(), CodegenError> {
        let d = self.k.output.dtype;
        let base = self.bases[self.k.inputs.len()];
        let _ = e;
        let v = match t {
            T::B => self.b.ins().uextend(types::I64, v),
            _ => v,
        };
        if t == T::F {
            self.store_float(d, base, flat, v);
        } else if d.has_integer_values() {
            // An integer into an integer type: wrap to its width.
            let code = self.wrap_int(d, v);
            self.store_code(d, base, flat, code);
        } else {
            // An integer into a float type: rounded from its f64 value.
            let f = self.b.ins().fcvt_from_sint(types::F64, v);
            self.store_float(d, base, flat, f);
        }
        Ok(())
    }

    /// Stores the float `x` (f32 or f64) as element `flat` of a `d` tensor
    /// at `base`, rounded to nearest even.
    pub fn store_float(&mut self, d: DType, base: Value, flat: Value, x: Value) {
        let m = mem();
        let xty = self.b.func.dfg.value_type(x);
        match d {
            DType::F32 => {
                let x = if xty == types::F32 {
                    x
                } else {
                    self.b.ins().fdemote(types::F32, x)
                };
                let a = self.addr(base, flat, 4);
                self.b.ins().store(m, x, a, 0);
            }
            DType::F64 => {
                let x = if xty == types::F64 {
                    x
                } else {
                    self.b.ins().fpromote(types::F64, x)
                };
                let a = self.addr(base, flat, 8);
                self.b.ins().store(m, x, a, 0);
            }
            _ => {
                let code = if xty == types::F32 && matches!(d, DType::BF16 | DType::F16) {
                    let c = self.encode_half(d, x);
                    self.b.ins().uextend(types::I64, c)
                } else {
                    let x = if xty == types::F64 {
                        x
                    } else {
                        self.b.ins().fpromote(types::F64, x)
                    };
                    let id = self.b.ins().iconst(types::I32, i64::from(dtype_id(d)));
                    self.call(
                        "kiln_encode",
                        &[types::I32, types::F64],
                        types::I64,
                        &[id, x],
                    )
                };
                self.store_code(d, base, flat, code);
            }
        }
    }

    /// Stores the code (i64) of element `flat` of a `d` tensor.
    fn store_code(&mut self, d: DType, base: Value, flat: Value, code: Value) {
        let m = mem();
        let bits = d.bits();
        if bits >= 8 {
            let size = bits / 8;
            let a = self.addr(base, flat, size);
            match size {
                1 => self.b.ins().istore8(m, code, a, 0),
                2 => self.b.ins().istore16(m, code, a, 0),
                4 => self.b.ins().istore32(m, code, a, 0),
                _ => self.b.ins().store(m, code, a, 0),
            };
            return;
        }
        // Sub-byte: read-modify-write of the byte(s) the element covers.
        let mask = (1i64 << bits) - 1;
        let code = self.b.ins().band_imm_s(code, mask);
        let pos = self.b.ins().imul_imm_s(flat, i64::from(bits));
        let byte = self.b.ins().ushr_imm_s(pos, 3);
        let sh = self.b.ins().band_imm_s(pos, 7);
        let a0 = self.b.ins().iadd(base, byte);
        let old = self.b.ins().uload8(types::I64, m, a0, 0);
        let mk = self.iconst(mask);
        let mk = self.b.ins().ishl(mk, sh);
        let keep = self.b.ins().band_not(old, mk);
        let put = self.b.ins().ishl(code, sh);
        let put = self.b.ins().band(put, mk);
        let new = self.b.ins().bor(keep, put);
        self.b.ins().istore8(m, new, a0, 0);
        if 8 % bits != 0 {
            let end = self.b.ins().iadd_imm_s(sh, i64::from(bits));
            let straddles = self.b.ins().icmp_imm_s(IntCC::UnsignedGreaterThan, end, 8);
            let then = self.b.create_block();
            let done = self.b.create_block();
            self.b.ins().brif(straddles, then, &[], done, &[]);
            self.b.switch_to_block(then);
            let eight = self.iconst(8);
            let down = self.b.ins().isub(eight, sh);
            let hi = self.b.ins().ushr(code, down);
            let mk = self.iconst(mask);
            let mk = self.b.ins().ushr(mk, down);
            let a1 = self.b.ins().iadd_imm_s(a0, 1);
            let old = self.b.ins().uload8(types::I64, m, a1, 0);
            let keep = self.b.ins().band_not(old, mk);
            let new = self.b.ins().bor(keep, hi);
            self.b.ins().istore8(m, new, a1, 0);
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(done);
        }
    }
}
