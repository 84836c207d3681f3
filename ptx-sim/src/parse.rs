//! Reading a PTX module into entries of decoded instructions.
//!
//! The reader takes the PTX that kiln writes: one instruction per line,
//! labels on lines of their own, registers named `%name` (declarations are
//! read for nothing but their names: every register is 64 bits wide here),
//! `.shared` arrays (static ones, and one `.extern` array sized at launch),
//! and `.param` parameters read with `ld.param`. Anything else is an
//! [`SimError::Parse`] naming the line, or an [`SimError::Unsupported`]
//! naming the instruction, never a guess.

use std::collections::HashMap;

use crate::SimError;
use crate::inst::{Addr, Base, Cmp, Inst, Op, Operand, Rnd, Shfl, Space, Special, Test, Ty};

/// A module: its entries.
#[derive(Clone, Debug)]
pub struct Module {
    pub entries: Vec<Entry>,
}

/// One `.entry`: parameters, shared arrays and instructions.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// Parameter names and types, in order.
    pub params: Vec<(String, Ty)>,
    /// Shared arrays: name, alignment, size (`None`: the dynamic array).
    pub shared: Vec<(String, u32, Option<u32>)>,
    /// Register names, by index.
    pub registers: Vec<String>,
    pub(crate) insts: Vec<Inst>,
}

impl Module {
    /// Reads a module; the first error names its line (1-based).
    pub fn parse(text: &str) -> Result<Module, SimError> {
        let mut entries = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        let mut module_shared = Vec::new();
        while i < lines.len() {
            let l = strip(lines[i]);
            if l.contains(".entry") {
                let (entry, next) = parse_entry(&lines, i, &module_shared)?;
                entries.push(entry);
                i = next;
                continue;
            }
            if l.starts_with(".shared") || l.starts_with(".extern") {
                module_shared.push(shared_decl(l, i + 1)?);
            }
            i += 1;
        }
        Ok(Module { entries })
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// A line without its comment, trimmed.
fn strip(l: &str) -> &str {
    match l.find("//") {
        Some(i) => l[..i].trim(),
        None => l.trim(),
    }
}

fn perr(line: usize, message: impl Into<String>) -> SimError {
    SimError::Parse {
        line,
        message: message.into(),
    }
}

/// `.shared .align 16 .b8 name[1024];` or `.extern .shared .align 16 .b8 name[];`
fn shared_decl(l: &str, line: usize) -> Result<(String, u32, Option<u32>), SimError> {
    let l = l.trim_end_matches(';');
    let words: Vec<&str> = l.split_whitespace().collect();
    let align = words
        .iter()
        .position(|w| *w == ".align")
        .and_then(|p| words.get(p + 1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    let last = words
        .last()
        .ok_or_else(|| perr(line, "an empty declaration"))?;
    let (name, rest) = last
        .split_once('[')
        .ok_or_else(|| perr(line, format!("expected `name[size]`, found `{last}`")))?;
    let size = rest.trim_end_matches(']');
    let elem = words
        .iter()
        .find_map(|w| Ty::parse(w.trim_start_matches('.')))
        .map_or(1, |t| t.bytes());
    let size = if size.is_empty() {
        None
    } else {
        let n: u32 = size
            .parse()
            .map_err(|_| perr(line, format!("a shared array size `{size}`")))?;
        Some(n * elem)
    };
    Ok((name.to_string(), align, size))
}

/// Parses the entry whose `.entry` line is `lines[start]`; the entry and
/// the index of the line after its closing brace.
fn parse_entry(
    lines: &[&str],
    start: usize,
    module_shared: &[(String, u32, Option<u32>)],
) -> Result<(Entry, usize), SimError> {
    let head = strip(lines[start]);
    let after = &head[head.find(".entry").unwrap() + ".entry".len()..];
    let name = after
        .split(|c: char| c == '(' || c.is_whitespace())
        .find(|s| !s.is_empty())
        .ok_or_else(|| perr(start + 1, "an entry without a name"))?
        .to_string();
    // Parameters up to `)`, then directives up to `{`.
    let mut params = Vec::new();
    let mut i = start;
    let mut text = String::from(after);
    while !text.contains(')') {
        i += 1;
        let l = lines
            .get(i)
            .ok_or_else(|| perr(start + 1, "unclosed parameters"))?;
        text.push(' ');
        text.push_str(strip(l));
    }
    let inner = &text[text.find('(').map_or(0, |p| p + 1)..text.find(')').unwrap()];
    for p in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = p.split_whitespace().collect();
        if words.len() != 3 || words[0] != ".param" {
            return Err(perr(
                i + 1,
                format!("expected `.param .TYPE name`, found `{p}`"),
            ));
        }
        let ty = Ty::parse(words[1].trim_start_matches('.'))
            .ok_or_else(|| perr(i + 1, format!("a parameter type `{}`", words[1])))?;
        params.push((words[2].to_string(), ty));
    }
    while !strip(lines[i]).ends_with('{') && strip(lines[i]) != "{" {
        i += 1;
        if i >= lines.len() {
            return Err(perr(start + 1, "an entry without a body"));
        }
    }
    i += 1;
    let mut b = BodyReader {
        regs: HashMap::new(),
        registers: Vec::new(),
        shared: module_shared.to_vec(),
        labels: HashMap::new(),
        insts: Vec::new(),
        targets: Vec::new(),
    };
    let param_index: HashMap<String, u32> = params
        .iter()
        .enumerate()
        .map(|(j, (n, _))| (n.clone(), j as u32))
        .collect();
    let mut depth = 1;
    while i < lines.len() {
        let l = strip(lines[i]);
        let line = i + 1;
        i += 1;
        if l.is_empty() {
            continue;
        }
        if l == "{" {
            depth += 1;
            continue;
        }
        if l == "}" {
            depth -= 1;
            if depth == 0 {
                break;
            }
            continue;
        }
        if let Some(label) = l.strip_suffix(':') {
            b.labels.insert(label.to_string(), b.insts.len());
            continue;
        }
        if l.starts_with(".reg") || l.starts_with(".maxntid") || l.starts_with(".minnctapersm") {
            continue;
        }
        if l.starts_with(".shared") || l.starts_with(".extern") {
            b.shared.push(shared_decl(l, line)?);
            continue;
        }
        if l.starts_with('.') {
            return Err(perr(line, format!("an unknown directive `{l}`")));
        }
        b.instruction(l, line, &param_index)?;
    }
    if depth != 0 {
        return Err(perr(start + 1, "an entry whose body is not closed"));
    }
    // Branch targets.
    for (inst, label, line) in std::mem::take(&mut b.targets) {
        let at = *b
            .labels
            .get(&label)
            .ok_or_else(|| perr(line, format!("a branch to `{label}`, which is not a label")))?;
        b.insts[inst].ops = vec![Operand::Label(at as u32)];
    }
    Ok((
        Entry {
            name,
            params,
            shared: b.shared,
            registers: b.registers,
            insts: b.insts,
        },
        i,
    ))
}

struct BodyReader {
    regs: HashMap<String, u32>,
    registers: Vec<String>,
    shared: Vec<(String, u32, Option<u32>)>,
    labels: HashMap<String, usize>,
    insts: Vec<Inst>,
    /// Branches to resolve: instruction, label, line.
    targets: Vec<(usize, String, usize)>,
}

impl BodyReader {
    fn reg(&mut self, name: &str) -> u32 {
        if let Some(&r) = self.regs.get(name) {
            return r;
        }
        let r = self.registers.len() as u32;
        self.registers.push(name.to_string());
        self.regs.insert(name.to_string(), r);
        r
    }

    fn instruction(
        &mut self,
        l: &str,
        line: usize,
        params: &HashMap<String, u32>,
    ) -> Result<(), SimError> {
        let l = l
            .strip_suffix(';')
            .ok_or_else(|| perr(line, format!("an instruction without `;`: `{l}`")))?
            .trim();
        let (guard, l) = match l.strip_prefix('@') {
            Some(rest) => {
                let (g, rest) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| perr(line, "a guard without an instruction"))?;
                let (neg, g) = match g.strip_prefix('!') {
                    Some(g) => (true, g),
                    None => (false, g),
                };
                (Some((self.reg(g), neg)), rest.trim())
            }
            None => (None, l),
        };
        let (opcode, rest) = match l.split_once(char::is_whitespace) {
            Some((o, r)) => (o, r.trim()),
            None => (l, ""),
        };
        let op = decode(opcode).map_err(|why| match why {
            Why::Unsupported => SimError::Unsupported {
                line,
                instruction: l.to_string(),
            },
            Why::Bad(m) => perr(line, format!("`{opcode}`: {m}")),
        })?;
        let mut ops = Vec::new();
        for text in split_top(rest) {
            ops.push(self.operand(text, line, params)?);
        }
        if let Op::Bra = op {
            let label = rest.to_string();
            self.targets.push((self.insts.len(), label, line));
        }
        self.insts.push(Inst {
            guard,
            op,
            ops,
            line: line as u32,
        });
        Ok(())
    }

    fn operand(
        &mut self,
        t: &str,
        line: usize,
        params: &HashMap<String, u32>,
    ) -> Result<Operand, SimError> {
        let t = t.trim();
        if let Some(inner) = t.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let mut v = Vec::new();
            for e in split_top(inner) {
                v.push(self.operand(e, line, params)?);
            }
            return Ok(Operand::Vec(v));
        }
        if let Some(inner) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']'))
            && let Some((map, coords)) = inner.split_once(',')
        {
            // A tensor map and its coordinates: `[map, {c0, c1, ..}]`.
            return Ok(Operand::Vec(vec![
                self.operand(map, line, params)?,
                self.operand(coords, line, params)?,
            ]));
        }
        if let Some(inner) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let (base, off) = match inner.find('+') {
                Some(p) => (inner[..p].trim(), inner[p + 1..].trim()),
                None => (inner.trim(), "0"),
            };
            let offset: i64 = parse_int(off)
                .ok_or_else(|| perr(line, format!("an address offset `{off}`")))?
                as i64;
            let base = if base.starts_with('%') {
                Base::Reg(self.reg(base))
            } else if let Some(&p) = params.get(base) {
                Base::Param(p)
            } else if let Some(s) = self.shared.iter().position(|s| s.0 == base) {
                Base::Shared(s as u32)
            } else {
                return Err(perr(
                    line,
                    format!("an address of `{base}`, which is not known"),
                ));
            };
            return Ok(Operand::Addr(Addr { base, offset }));
        }
        if t == "_" {
            return Ok(Operand::Sink);
        }
        if let Some(p) = t.strip_prefix('!') {
            return Ok(Operand::NotPred(self.reg(p)));
        }
        if t.starts_with('%') {
            let special = match t {
                "%tid.x" => Some(Special::Tid),
                "%ntid.x" => Some(Special::Ntid),
                "%ctaid.x" => Some(Special::Ctaid),
                "%nctaid.x" => Some(Special::Nctaid),
                "%laneid" => Some(Special::Lane),
                "%warpid" => Some(Special::Warp),
                "%tid.y" | "%tid.z" | "%ctaid.y" | "%ctaid.z" => Some(Special::Zero),
                "%ntid.y" | "%ntid.z" | "%nctaid.y" | "%nctaid.z" => Some(Special::One),
                _ => None,
            };
            return Ok(match special {
                Some(s) => Operand::Special(s),
                None if t.contains('.') => {
                    return Err(perr(line, format!("a special register `{t}`")));
                }
                None => Operand::Reg(self.reg(t)),
            });
        }
        if let Some(h) = t.strip_prefix("0f").or_else(|| t.strip_prefix("0F")) {
            let bits = u32::from_str_radix(h, 16)
                .map_err(|_| perr(line, format!("an f32 immediate `{t}`")))?;
            return Ok(Operand::Imm(u64::from(bits)));
        }
        if let Some(h) = t.strip_prefix("0d").or_else(|| t.strip_prefix("0D")) {
            let bits = u64::from_str_radix(h, 16)
                .map_err(|_| perr(line, format!("an f64 immediate `{t}`")))?;
            return Ok(Operand::Imm(bits));
        }
        if let Some(v) = parse_int(t) {
            return Ok(Operand::Imm(v));
        }
        if let Some(s) = self.shared.iter().position(|s| s.0 == t) {
            return Ok(Operand::SharedSym(s as u32));
        }
        // A label (branch targets are resolved later).
        if t.starts_with('$') || t.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Ok(Operand::Sink);
        }
        Err(perr(line, format!("an operand `{t}`")))
    }
}

/// A decimal or hexadecimal integer, possibly negative, as 64 bits.
fn parse_int(t: &str) -> Option<u64> {
    let (neg, t) = match t.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, t),
    };
    let t = t.trim_end_matches('U');
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse::<u64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

/// Splits at commas outside braces and brackets.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[from..i].trim());
                from = i + 1;
            }
            _ => {}
        }
    }
    if !s[from..].trim().is_empty() {
        out.push(s[from..].trim());
    }
    out
}

enum Why {
    Unsupported,
    Bad(String),
}

/// Decodes an opcode (`add.s64`, `ld.global.v4.b32`, ...).
fn decode(opcode: &str) -> Result<Op, Why> {
    let mut parts = opcode.split('.');
    let name = parts.next().unwrap_or("");
    let mods: Vec<&str> = parts.collect();
    let tys: Vec<Ty> = mods.iter().filter_map(|m| Ty::parse(m)).collect();
    let has = |m: &str| mods.contains(&m);
    let ty = || -> Result<Ty, Why> {
        tys.last()
            .copied()
            .ok_or_else(|| Why::Bad("no type".into()))
    };
    // Rounding other than to nearest is only taken where it is written.
    let float_rnd_ok = |t: Ty| !t.is_float() || !(has("rz") || has("rm") || has("rp"));
    let op = match name {
        "mov" => Op::Mov(ty()?),
        "add" | "sub" | "mul" | "mad" | "fma" | "div" => {
            let t = ty()?;
            if !float_rnd_ok(t) || has("sat") {
                return Err(Why::Unsupported);
            }
            let wide = has("wide");
            let hi = has("hi");
            match name {
                "add" => Op::Add(t),
                "sub" => Op::Sub(t),
                "mul" => Op::Mul(t, hi, wide),
                "mad" => Op::Mad(t, hi, wide),
                "fma" => Op::Fma(t),
                _ => Op::Div(t),
            }
        }
        "rem" => Op::Rem(ty()?),
        "min" => Op::Min(ty()?, has("NaN")),
        "max" => Op::Max(ty()?, has("NaN")),
        "abs" => Op::Abs(ty()?),
        "neg" => Op::Neg(ty()?),
        "not" => Op::Not(ty()?),
        "and" => Op::And(ty()?),
        "or" => Op::Or(ty()?),
        "xor" => Op::Xor(ty()?),
        "lop3" => Op::Lop3(ty()?),
        "shl" => Op::Shl(ty()?),
        "shr" => Op::Shr(ty()?),
        "copysign" => Op::Copysign(ty()?),
        "sqrt" => Op::Sqrt(ty()?),
        "rcp" => Op::Rcp(ty()?),
        "rsqrt" => Op::Rsqrt(ty()?),
        "ex2" => Op::Ex2(ty()?),
        "lg2" => Op::Lg2(ty()?),
        "sin" => Op::Sin(ty()?),
        "cos" => Op::Cos(ty()?),
        "tanh" => Op::Tanh(ty()?),
        "testp" => {
            let test = match mods.first().copied() {
                Some("finite") => Test::Finite,
                Some("infinite") => Test::Infinite,
                Some("number") => Test::Number,
                Some("notanumber") => Test::NotANumber,
                Some("normal") => Test::Normal,
                Some("subnormal") => Test::Subnormal,
                _ => return Err(Why::Bad("an unknown test".into())),
            };
            Op::Testp(test, ty()?)
        }
        "setp" => {
            let cmp = Cmp::parse(mods.first().copied().unwrap_or(""))
                .ok_or_else(|| Why::Bad("an unknown comparison".into()))?;
            let bool_op = mods.iter().find_map(|m| match *m {
                "and" => Some(0u8),
                "or" => Some(1),
                "xor" => Some(2),
                _ => None,
            });
            Op::Setp(cmp, bool_op, ty()?)
        }
        "selp" => Op::Selp(ty()?),
        "cvt" => {
            if tys.len() != 2 {
                return Err(Why::Bad("cvt takes two types".into()));
            }
            let rnd = if has("rni") {
                Rnd::IntNearest
            } else if has("rzi") {
                Rnd::IntZero
            } else if has("rmi") {
                Rnd::IntDown
            } else if has("rpi") {
                Rnd::IntUp
            } else if has("rz") {
                Rnd::Zero
            } else if has("rm") {
                Rnd::Down
            } else if has("rp") {
                Rnd::Up
            } else {
                Rnd::Nearest
            };
            Op::Cvt {
                d: tys[0],
                s: tys[1],
                rnd,
                sat: has("sat"),
            }
        }
        "cvta" => {
            if !has("to") || !has("global") {
                return Err(Why::Unsupported);
            }
            Op::Cvta
        }
        "bfe" => Op::Bfe(ty()?),
        "popc" => Op::Popc(ty()?),
        "clz" => Op::Clz(ty()?),
        "brev" => Op::Brev(ty()?),
        "ld" | "st" => {
            let space = if has("param") {
                Space::Param
            } else if has("global") {
                Space::Global
            } else if has("shared") {
                Space::Shared
            } else {
                return Err(Why::Unsupported);
            };
            let vec = if has("v4") {
                4
            } else if has("v2") {
                2
            } else {
                1
            };
            if name == "ld" {
                Op::Ld(space, vec, ty()?)
            } else {
                Op::St(space, vec, ty()?)
            }
        }
        // Blocks run one after another here, so an atomic is a plain
        // read-modify-write (any ordering and scope qualifiers hold).
        "atom" if has("global") && has("add") => match ty()? {
            t @ (Ty::U32 | Ty::U64 | Ty::S32) => Op::AtomAdd(t),
            _ => return Err(Why::Unsupported),
        },
        "cp" => {
            if mods.first() != Some(&"async") {
                return Err(Why::Unsupported);
            }
            if has("bulk") && has("tensor") {
                let rank = mods
                    .iter()
                    .find_map(|m| m.strip_suffix('d').and_then(|r| r.parse::<u8>().ok()))
                    .filter(|r| (1..=5).contains(r))
                    .ok_or(Why::Unsupported)?;
                let ok = has("global")
                    && has("tile")
                    && (has("shared::cluster") || has("shared::cta"))
                    && has("mbarrier::complete_tx::bytes");
                if !ok {
                    return Err(Why::Unsupported);
                }
                return Ok(Op::Tma(rank));
            }
            if has("commit_group") {
                Op::CpCommit
            } else if has("wait_group") {
                Op::CpWait
            } else if has("wait_all") {
                Op::CpWaitAll
            } else if has("shared") && has("global") {
                Op::CpAsync
            } else {
                return Err(Why::Unsupported);
            }
        }
        "bra" => Op::Bra,
        "ret" | "exit" => Op::Ret,
        "bar" if has("warp") && has("sync") => Op::WarpSync,
        "bar" | "barrier" => {
            if !(has("sync") || mods.is_empty()) {
                return Err(Why::Unsupported);
            }
            Op::Bar
        }
        "fence" | "membar" => Op::Fence,
        "mbarrier" if !(has("shared::cta") || has("shared")) || !has("b64") => {
            return Err(Why::Unsupported);
        }
        "mbarrier" if has("init") => Op::MbarInit,
        "mbarrier" if has("arrive") && has("expect_tx") => Op::MbarArriveTx,
        "mbarrier" if has("arrive") && !has("noComplete") => Op::MbarArrive,
        "mbarrier" if has("try_wait") && has("parity") => Op::MbarTryWait,
        "prefetch" if has("global") && (has("L1") || has("L2")) => Op::Prefetch,
        // The warpgroup's ordering instructions: `mma_async` runs at once
        // here, so there is nothing to order or wait for.
        "wgmma" if has("fence") || has("commit_group") || has("wait_group") => Op::Fence,
        "wgmma" if has("mma_async") => {
            let shape = mods
                .iter()
                .find(|m| m.starts_with("m64n"))
                .ok_or(Why::Unsupported)?;
            let (n, k) = shape[4..].split_once('k').ok_or(Why::Unsupported)?;
            let (n, k): (u32, u32) = (
                n.parse().map_err(|_| Why::Unsupported)?,
                k.parse().map_err(|_| Why::Unsupported)?,
            );
            if tys.len() != 3 || has("satfinite") || n % 8 != 0 || n > 256 {
                return Err(Why::Unsupported);
            }
            let ok = match (tys[0], tys[1], k) {
                (Ty::F32, Ty::F16 | Ty::BF16, 16) => tys[2] == tys[1],
                (Ty::F32, Ty::E4m3 | Ty::E5m2, 32) => matches!(tys[2], Ty::E4m3 | Ty::E5m2),
                (Ty::S32, Ty::S8 | Ty::U8, 32) => matches!(tys[2], Ty::S8 | Ty::U8),
                _ => false,
            };
            if !ok {
                return Err(Why::Unsupported);
            }
            Op::Wgmma(n, k, tys[0], tys[1], tys[2])
        }
        "shfl" => {
            let mode = if has("bfly") {
                Shfl::Bfly
            } else if has("down") {
                Shfl::Down
            } else if has("up") {
                Shfl::Up
            } else if has("idx") {
                Shfl::Idx
            } else {
                return Err(Why::Bad("a shuffle without a mode".into()));
            };
            Op::Shfl(mode)
        }
        "ldmatrix" => {
            if !has("m8n8") || !has("b16") {
                return Err(Why::Unsupported);
            }
            let num = if has("x4") {
                4
            } else if has("x2") {
                2
            } else {
                1
            };
            Op::Ldmatrix(num, has("trans"))
        }
        "mma" if has("m16n8k32") => {
            // mma.sync.aligned.m16n8k32.row.col.s32.ATYPE.BTYPE.s32
            let int8 = |t: Ty| matches!(t, Ty::S8 | Ty::U8);
            let fp8 = |t: Ty| matches!(t, Ty::E4m3 | Ty::E5m2);
            if !has("row") || !has("col") || tys.len() != 4 || has("satfinite") {
                return Err(Why::Unsupported);
            }
            if tys[0] == Ty::F32 && tys[3] == Ty::F32 && fp8(tys[1]) && fp8(tys[2]) {
                return Ok(Op::MmaF8(tys[1], tys[2]));
            }
            if tys[0] != Ty::S32 || tys[3] != Ty::S32 || !int8(tys[1]) || !int8(tys[2]) {
                return Err(Why::Unsupported);
            }
            Op::MmaI8(tys[1], tys[2])
        }
        "mma" => {
            // mma.sync.aligned.m16n8k16.row.col.DTYPE.ATYPE.BTYPE.CTYPE
            if !has("m16n8k16") || !has("row") || !has("col") || tys.len() != 4 {
                return Err(Why::Unsupported);
            }
            if tys[0] != Ty::F32 || tys[3] != Ty::F32 || tys[1] != tys[2] {
                return Err(Why::Unsupported);
            }
            if !matches!(tys[1], Ty::F16 | Ty::BF16) {
                return Err(Why::Unsupported);
            }
            Op::Mma(tys[1])
        }
        _ => return Err(Why::Unsupported),
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_splits() {
        assert_eq!(parse_int("-1"), Some(u64::MAX));
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("12"), Some(12));
        assert_eq!(parse_int("1.5"), None);
        assert_eq!(
            split_top("{%r1, %r2}, [%rd1+8], 4"),
            vec!["{%r1, %r2}", "[%rd1+8]", "4"]
        );
    }

    #[test]
    fn an_unknown_instruction_is_named_with_its_line() {
        let ptx = ".version 8.0\n.target sm_90a\n.address_size 64\n\
                   .visible .entry k(\n\t.param .u64 p\n)\n{\n\tfrobnicate.b32 %r1, %r2;\n}\n";
        let e = Module::parse(ptx).unwrap_err();
        assert!(
            matches!(&e, SimError::Unsupported { line: 8, instruction } if instruction.starts_with("frobnicate")),
            "{e}"
        );
        let bad = ptx.replace("frobnicate.b32 %r1, %r2;", "bra $nowhere;");
        let e = Module::parse(&bad).unwrap_err();
        assert!(e.to_string().contains("$nowhere"), "{e}");
    }
}
