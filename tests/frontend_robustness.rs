//! Robustness of the two text front-ends on malformed input: the model
//! language (`compile_source`) and the `.kir` parser (`parse` + `verify`).
//!
//! Random token soups, randomly generated models and byte-level mutations of
//! the repository's example files go through the front-end and through the
//! rendering of its diagnostics. Neither may panic, a failure must come with
//! at least one diagnostic, and every span of a diagnostic must lie inside
//! its source (on character boundaries).
//!
//! The cases are few and the seed is fixed so that the test is quick and
//! deterministic in CI. For a longer search, set `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED`, e.g.
//! `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=7 cargo test --release --test frontend_robustness`,
//! or run the cargo-fuzz targets under `fuzz/`.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::frontend::compile_source;
use kiln_dialect::Span;
use kiln_dialect::ops::OP_TABLE;
use kiln_dialect::text::{parse, print};
use kiln_dialect::verify::{render, verify};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngSeed};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `cases` cases from a fixed seed, unless the environment asks otherwise.
fn config(cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x6b69_6c6e);
    }
    c.failure_persistence = None;
    c
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-string panic payload)".to_string())
}

/// Checks that `span` lies inside one of `files` (name, text).
fn check_span(span: &Span, files: &[(String, String)]) -> Result<(), String> {
    let Some((name, text)) = files.get(span.file as usize) else {
        return Err(format!(
            "span {span:?} points at file {} of {}",
            span.file,
            files.len()
        ));
    };
    if span.start > span.end || span.end > text.len() {
        return Err(format!(
            "span {span:?} is outside {name} ({} bytes)",
            text.len()
        ));
    }
    if !text.is_char_boundary(span.start) || !text.is_char_boundary(span.end) {
        return Err(format!("span {span:?} splits a character of {name}"));
    }
    Ok(())
}

/// Compiles model-language source; checks the properties above.
fn check_kiln(src: &str) -> Result<(), String> {
    check_kiln_in("examples", src)
}

/// [`check_kiln`] with imports resolved in `dir` (relative to the workspace root).
fn check_kiln_in(dir: &str, src: &str) -> Result<(), String> {
    let dir = root().join(dir);
    let result = catch_unwind(AssertUnwindSafe(|| {
        compile_source("robust.kiln", src, &dir)
    }))
    .map_err(|p| format!("compile_source panicked: {}", panic_message(&*p)))?;
    let failed = match result {
        Ok(compiled) => {
            return catch_unwind(AssertUnwindSafe(|| print(&compiled.graph)))
                .map(|_| ())
                .map_err(|p| format!("printing the graph panicked: {}", panic_message(&*p)));
        }
        Err(failed) => failed,
    };
    if failed.diags.is_empty() {
        return Err("the compilation failed without a diagnostic".to_string());
    }
    for d in &failed.diags {
        for (span, _) in &d.labels {
            check_span(span, &failed.sources.files)
                .map_err(|e| format!("diagnostic `{}`: {e}", d.message))?;
        }
    }
    let rendered = catch_unwind(AssertUnwindSafe(|| failed.render()))
        .map_err(|p| format!("rendering the errors panicked: {}", panic_message(&*p)))?;
    if rendered.is_empty() {
        return Err("the errors rendered to nothing".to_string());
    }
    Ok(())
}

/// Parses, verifies and prints or renders `.kir` text; checks the properties above.
fn check_kir(src: &str) -> Result<(), String> {
    let files = [("robust.kir".to_string(), src.to_string())];
    let parsed = catch_unwind(AssertUnwindSafe(|| parse(src)))
        .map_err(|p| format!("parse panicked: {}", panic_message(&*p)))?;
    let g = match parsed {
        Ok(g) => g,
        Err(e) => {
            check_span(&e.span, &files).map_err(|m| format!("parse error `{e}`: {m}"))?;
            catch_unwind(AssertUnwindSafe(|| {
                e.diagnostic().render("robust.kir", src)
            }))
            .map_err(|p| format!("rendering the parse error panicked: {}", panic_message(&*p)))?;
            return Ok(());
        }
    };
    let verified = catch_unwind(AssertUnwindSafe(|| verify(&g)))
        .map_err(|p| format!("verify panicked: {}", panic_message(&*p)))?;
    match verified {
        Ok(()) => {
            catch_unwind(AssertUnwindSafe(|| print(&g)))
                .map_err(|p| format!("print panicked: {}", panic_message(&*p)))?;
        }
        Err(errors) => {
            if errors.is_empty() {
                return Err("verify failed without an error".to_string());
            }
            for e in &errors {
                if let Some(span) = &e.span {
                    check_span(span, &files).map_err(|m| format!("verify error `{e}`: {m}"))?;
                }
            }
            catch_unwind(AssertUnwindSafe(|| render(&errors, "robust.kir", src))).map_err(|p| {
                format!(
                    "rendering the verify errors panicked: {}",
                    panic_message(&*p)
                )
            })?;
        }
    }
    Ok(())
}

fn read_dir_files(dir: &str, ext: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            (
                format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()),
                text,
            )
        })
        .collect();
    out.sort();
    out
}

/// Every `.kiln` example (each compiles).
fn kiln_examples() -> &'static [(String, String)] {
    static S: OnceLock<Vec<(String, String)>> = OnceLock::new();
    S.get_or_init(|| {
        let v = read_dir_files("examples", "kiln");
        assert!(!v.is_empty(), "no .kiln examples");
        v
    })
}

/// The seeds of the mutations: the examples and the `.kiln` file tests
/// (most of which are rejected).
fn kiln_sources() -> &'static [(String, String)] {
    static S: OnceLock<Vec<(String, String)>> = OnceLock::new();
    S.get_or_init(|| {
        let mut v = kiln_examples().to_vec();
        v.extend(read_dir_files("tests/filetests/kiln", "kiln"));
        v.extend(read_dir_files("tests/filetests/kiln/imports", "kiln"));
        v
    })
}

/// The folder of a seed named `dir/file`.
fn dir_of(name: &str) -> &str {
    name.rsplit_once('/').map_or(".", |(d, _)| d)
}

/// Every `.kir` example and file test.
fn kir_sources() -> &'static [(String, String)] {
    static S: OnceLock<Vec<(String, String)>> = OnceLock::new();
    S.get_or_init(|| {
        let mut v = read_dir_files("examples/ir", "kir");
        for d in ["graphs", "parse", "verify"] {
            v.extend(read_dir_files(&format!("tests/filetests/{d}"), "kir"));
        }
        assert!(!v.is_empty(), "no .kir files");
        v
    })
}

// ---- token soups ---------------------------------------------------------

const KEYWORDS: &[&str] = &[
    "model", "block", "input", "weight", "output", "let", "const", "for", "in", "return", "import",
    "as",
];

const PUNCT: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "..",
    "...",
    ".",
    "+",
    "-",
    "*",
    "/",
    "@",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "\n",
    "\n",
    "\n",
    ".T",
    "// note\n",
];

const WORDS: &[&str] = &[
    "x",
    "y",
    "w",
    "b",
    "h",
    "m",
    "i",
    "n",
    "seq",
    "batch",
    "d",
    "T",
    "f32",
    "f16",
    "bf16",
    "f64",
    "i8",
    "i32",
    "i64",
    "u8",
    "i4",
    "u4",
    "bool",
    "f8e4m3",
    "e8m0",
    "axis",
    "dtype",
    "shape",
    "to",
    "eps",
    "causal",
    "approximate",
    "tanh",
    "none",
    "true",
    "false",
    "group",
    "block",
    "per_channel",
    "per_tensor",
    "int4",
    "int8",
    "uint4",
    "fp8",
    "fp4",
    "nv",
    "mx",
    "scale",
    "zero",
    "global",
    "nchw",
    "nhwc",
    "constant",
    "iota",
    "indexing",
    "msb_first",
    "_",
    "a1",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "64",
    "-1",
    "0.5",
    "1e-5",
    "1e308",
    "1e999",
    "0.0",
    "9223372036854775807",
    "9223372036854775808",
    "4294967296",
    "18446744073709551615",
];

const STRINGS: &[&str] = &[
    "\"mlp.kiln\"",
    "\"llama_block.kiln\"",
    "\"\"",
    "\"robust.kiln\"",
    "\"nope.kiln\"",
    "\"../examples/mlp.kiln\"",
    "\"a\\\"b\"",
];

fn op_names() -> Vec<String> {
    OP_TABLE.iter().map(|s| s.mnemonic.to_string()).collect()
}

fn attr_names() -> Vec<String> {
    let mut v: Vec<String> = OP_TABLE
        .iter()
        .flat_map(|s| s.attrs.iter().map(|a| a.name.to_string()))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn kiln_token() -> impl Strategy<Value = String> {
    let s = |v: &[&str]| select(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    prop_oneof![
        3 => s(KEYWORDS),
        6 => s(PUNCT),
        4 => s(WORDS),
        3 => select(op_names()),
        1 => select(attr_names()),
        2 => s(NUMBERS),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => any::<f64>().prop_map(|x| format!("{x:e}")),
        1 => s(STRINGS),
        1 => any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn soup(token: impl Strategy<Value = String>, len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec((token, select(vec!["", " ", " ", "\n"])), 0..len).prop_map(|v| {
        v.into_iter()
            .map(|(t, sep)| format!("{t}{sep}"))
            .collect::<String>()
    })
}

// ---- generated models ----------------------------------------------------
//
// Programs shaped like real models, so that many get past the parser into
// the lowering and shape inference: declared tensors, op calls with operands
// and attributes, constants, blocks, loops and indexing, with numbers that are
// mostly small and sometimes at the edge of `i64`.

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => (0i64..70).prop_map(|i| i.to_string()),
        2 => select(vec!["0.5", "1e-5", "2.0", "0.0"]).prop_map(str::to_string),
        1 => select(vec!["9223372036854775807", "4294967296", "1e308", "1e999"])
            .prop_map(str::to_string),
    ]
}

/// A constant expression: numbers and arithmetic.
fn const_expr() -> impl Strategy<Value = String> {
    number().prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            3 => (inner.clone(), select(vec!["+", "-", "*", "/"]), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            1 => inner.prop_map(|a| format!("({a})")),
        ]
    })
}

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        8 => select(vec!["x", "x", "w", "h", "b", "a", "c", "n", "i"]).prop_map(str::to_string),
        3 => number(),
        1 => select(vec!["d", "seq", "batch", "T", "true"]).prop_map(str::to_string),
    ];
    let ops = op_names();
    let attrs = attr_names();
    leaf.prop_recursive(4, 32, 3, move |inner| {
        let named = (select(attrs.clone()), inner.clone()).prop_map(|(k, v)| format!("{k} = {v}"));
        let word_arg =
            (select(attrs.clone()), select(WORDS.to_vec())).prop_map(|(k, v)| format!("{k} = {v}"));
        let arg = prop_oneof![6 => inner.clone(), 2 => named, 1 => word_arg];
        let index_item = prop_oneof![
            3 => inner.clone(),
            1 => Just(":".to_string()),
            1 => Just("...".to_string()),
            2 => (prop::option::of(inner.clone()), prop::option::of(inner.clone()))
                .prop_map(|(a, b)| format!("{}:{}", a.unwrap_or_default(), b.unwrap_or_default())),
            1 => (
                prop::option::of(inner.clone()),
                prop::option::of(inner.clone()),
                prop::option::of(inner.clone())
            )
                .prop_map(|(a, b, s)| format!(
                    "{}:{}:{}",
                    a.unwrap_or_default(),
                    b.unwrap_or_default(),
                    s.unwrap_or_default()
                )),
        ];
        prop_oneof![
            4 => (select(ops.clone()), prop::collection::vec(arg, 0..4))
                .prop_map(|(f, a)| format!("{f}({})", a.join(", "))),
            4 => (
                inner.clone(),
                select(vec!["+", "-", "*", "/", "@", "@", "==", "<", ">="]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            1 => inner.clone().prop_map(|a| format!("({a})")),
            1 => inner.clone().prop_map(|a| format!("{a}.T")),
            1 => prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            2 => (inner.clone(), prop::collection::vec(index_item, 1..4))
                .prop_map(|(b, items)| format!("{b}[{}]", items.join(", "))),
            1 => (inner.clone(), number()).prop_map(|(a, i)| format!("blk({a}) as layers[{i}].mlp")),
            1 => inner.prop_map(|a| format!("blk({a})")),
        ]
    })
}

fn dims() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => select(vec!["batch", "seq", "n", "c", "4", "8", "64", "1", "0", "n * 2", "c / 2"])
                .prop_map(str::to_string),
            2 => number(),
            1 => const_expr(),
        ],
        0..4,
    )
    .prop_map(|v| v.join(", "))
}

fn ty() -> impl Strategy<Value = String> {
    let modifier = prop_oneof![
        select(vec![
            "int4",
            "int8",
            "uint4",
            "fp8",
            "fp4",
            "nv",
            "mx",
            "group",
            "block",
            "per_channel",
            "per_tensor",
            "msb_first",
            "scale",
            "zero",
            "axis",
            "nchw",
            "nhwc",
        ])
        .prop_map(str::to_string),
        select(vec!["0", "1", "2", "4", "32", "64", "128"]).prop_map(str::to_string),
    ];
    (
        select(vec![
            "f32", "f32", "f16", "bf16", "i8", "i32", "u8", "bool", "i4", "f8e4m3", "x",
        ]),
        dims(),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(modifier, 1..5),
        ],
    )
        .prop_map(|(dt, d, mods)| format!("{dt}[{d}] {}", mods.join(" ")))
}

/// A type without modifiers (as in `output y: f32[4] = ...`).
fn plain_ty() -> impl Strategy<Value = String> {
    (
        select(vec!["f32", "f32", "f16", "bf16", "i8", "i32", "bool"]),
        dims(),
    )
        .prop_map(|(dt, d)| format!("{dt}[{d}]"))
}

fn stmt() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => (select(vec!["x", "x2", "c"]), ty()).prop_map(|(n, t)| format!("input {n}: {t}")),
        2 => (select(vec!["w", "b", "w2"]), ty()).prop_map(|(n, t)| format!("weight {n}: {t}")),
        5 => (select(vec!["h", "h", "x", "a, b2"]), expr())
            .prop_map(|(n, e)| format!("let {n} = {e}")),
        1 => (select(vec!["h", "x"]), expr()).prop_map(|(n, e)| format!("{n} = {e}")),
        1 => (select(vec!["k", "n", "c"]), const_expr())
            .prop_map(|(n, e)| format!("const {n} = {e}")),
        1 => (0i64..4, prop::collection::vec(expr(), 0..2)).prop_map(|(n, es)| {
            let body: Vec<String> = es.into_iter().map(|e| format!("    h = {e}\n")).collect();
            format!("for i in 0..{n} {{\n{}}}", body.concat())
        }),
        4 => (select(vec!["y", "z", "y"]), prop::option::of(plain_ty()), expr()).prop_map(
            |(n, t, e)| match t {
                Some(t) => format!("output {n}: {t} = {e}"),
                None => format!("output {n} = {e}"),
            }
        ),
    ]
}

fn program() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(const_expr(), 0..3).prop_map(|v| {
            v.into_iter()
                .zip(["c", "d", "n"])
                .map(|(e, n)| format!("const {n} = {e}"))
                .collect::<Vec<_>>()
        }),
        prop::option::of((
            select(vec!["blk", "blk", "mlp"]),
            select(vec!["a", "a", "a, b", "a: f32[4, 8]", ""]),
            prop::collection::vec(stmt(), 0..3),
            expr(),
        )),
        select(vec![
            "",
            "input x: f32[4, 8]\n    weight w: f32[8, 8]\n",
            "input x: f32[4, 8]\n    weight w: f32[8, 8]\n",
            "input x: f32[batch, 64]\n    weight w: f32[64, 64]\n    weight b: f32[64]\n",
            "input x: i8[2, 3, 4]\n    const n = 4\n",
        ]),
        prop::collection::vec(stmt(), 0..6),
        prop_oneof![
            16 => Just(None),
            1 => Just(Some("import \"mlp.kiln\"")),
            1 => Just(Some("import \"nope.kiln\"")),
        ],
    )
        .prop_map(|(consts, block, prelude, stmts, import)| {
            let mut s = String::new();
            if let Some(i) = import {
                s.push_str(i);
                s.push('\n');
            }
            for c in consts {
                s.push_str(&c);
                s.push('\n');
            }
            if let Some((name, params, body, ret)) = block {
                s.push_str(&format!("block {name}({params}) {{\n"));
                for b in body {
                    s.push_str(&format!("    {b}\n"));
                }
                s.push_str(&format!("    return {ret}\n}}\n"));
            }
            s.push_str("model m {\n    ");
            s.push_str(prelude);
            for st in stmts {
                s.push_str(&format!("    {st}\n"));
            }
            s.push_str("}\n");
            s
        })
}

/// An expression over tensors of shape `[4, 8]` (the `leaves`, and
/// `w: f32[8, 8]`) that keeps that shape, so that whole programs of them
/// compile; now and then a random expression takes the place of a part.
fn plausible_expr() -> impl Strategy<Value = String> {
    plausible_expr_over(vec!["x", "x", "x", "h", "h", "h2"])
}

fn plausible_expr_over(leaves: Vec<&'static str>) -> impl Strategy<Value = String> {
    let leaf = select(leaves).prop_map(str::to_string);
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            4 => (
                select(vec![
                    "relu", "gelu", "exp", "tanh", "sigmoid", "silu", "abs", "neg", "sqrt",
                    "softplus", "sin", "floor", "rsqrt", "hardswish", "erf", "log",
                ]),
                inner.clone()
            )
                .prop_map(|(f, a)| format!("{f}({a})")),
            4 => (inner.clone(), select(vec!["+", "-", "*", "/"]), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            2 => inner.clone().prop_map(|a| format!("{a} @ w")),
            1 => (inner.clone(), number()).prop_map(|(a, k)| format!("{a} * {k}")),
            1 => inner.clone().prop_map(|a| format!("softmax({a}, axis = 1)")),
            1 => inner.clone().prop_map(|a| format!("layer_norm({a}, eps = 1e-5)")),
            1 => inner.clone().prop_map(|a| format!("{a}.T.T")),
            1 => inner.clone().prop_map(|a| format!("({a})[:, 0:8]")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            1 => inner.clone().prop_map(|a| format!("transpose(transpose({a}, [1, 0]), [1, 0])")),
            1 => inner.clone().prop_map(|a| format!("reshape({a}, [4, 8])")),
            1 => inner.clone().prop_map(|a| format!("{a} + reduce_sum({a}, axes = [1], keepdim = true)")),
            1 => inner.clone().prop_map(|a| format!("blk({a})")),
            1 => expr(),
        ]
    })
}

/// A model over `x` and `w` built from [`plausible_expr`], with a block,
/// a loop and reassignments.
fn plausible_program() -> impl Strategy<Value = String> {
    let stmt = prop_oneof![
        4 => plausible_expr().prop_map(|e| format!("h = {e}")),
        2 => plausible_expr().prop_map(|e| format!("h2 = {e}")),
        1 => (0i64..3, plausible_expr())
            .prop_map(|(n, e)| format!("for i in 0..{n} {{\n        h = {e}\n    }}")),
    ];
    (
        plausible_expr_over(vec!["a"]),
        plausible_expr(),
        prop::collection::vec(stmt, 0..5),
        plausible_expr(),
        prop::option::of(plausible_expr()),
    )
        .prop_map(|(body, first, stmts, out, out2)| {
            let mut s = format!(
                "block blk(a) {{\n    weight w: f32[8, 8]\n    return {body}\n}}\n\
                 model m {{\n    input x: f32[4, 8]\n    weight w: f32[8, 8]\n    let h = x\n    let h2 = x\n    h = {first}\n"
            );
            for st in stmts {
                s.push_str(&format!("    {st}\n"));
            }
            if let Some(z) = out2 {
                s.push_str(&format!("    output z = {z}\n"));
            }
            s.push_str(&format!("    output y = {out}\n}}\n"));
            s
        })
}

// ---- byte mutations ------------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    Duplicate(Index, usize, Index),
    Swap(Index, Index, usize),
    Truncate(Index),
    Replace(Index, u8),
}

/// Bytes to insert: mostly tokens of the language, sometimes arbitrary text
/// or bytes (which the lexer rejects, ending the compilation early).
fn insertion(token: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => token.prop_map(String::into_bytes),
        2 => "[ -~]{1,8}".prop_map(String::into_bytes),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..8),
    ]
}

fn mutation(token: impl Strategy<Value = String>) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1usize..48).prop_map(|(a, n)| Mutation::Delete(a, n)),
        4 => (any::<Index>(), insertion(token)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        2 => (any::<Index>(), 1usize..64, any::<Index>())
            .prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        2 => (any::<Index>(), any::<Index>(), 1usize..32).prop_map(|(a, b, n)| Mutation::Swap(a, b, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), prop_oneof![6 => 0x20u8..0x7f, 1 => any::<u8>()])
            .prop_map(|(a, b)| Mutation::Replace(a, b)),
    ]
}

fn apply(src: &str, muts: &[Mutation]) -> String {
    let mut b = src.as_bytes().to_vec();
    for m in muts {
        let len = b.len();
        // A position in 0..=len.
        let pos = |i: &Index| i.index(len + 1);
        match m {
            Mutation::Delete(a, n) => {
                let a = pos(a);
                let e = (a + n).min(len);
                b.drain(a..e);
            }
            Mutation::Insert(a, bytes) => {
                let a = pos(a);
                b.splice(a..a, bytes.iter().copied());
            }
            Mutation::Duplicate(a, n, at) => {
                let a = pos(a);
                let e = (a + n).min(len);
                let piece = b[a..e].to_vec();
                let at = pos(at);
                b.splice(at..at, piece);
            }
            Mutation::Swap(x, y, n) => {
                let (x, y) = (pos(x), pos(y));
                let (x, y) = (x.min(y), x.max(y));
                let n = (*n).min(y - x).min(len - y);
                if n > 0 {
                    let first = b[x..x + n].to_vec();
                    let second = b[y..y + n].to_vec();
                    b.splice(y..y + n, first);
                    b.splice(x..x + n, second);
                }
            }
            Mutation::Truncate(a) => b.truncate(pos(a)),
            Mutation::Replace(a, v) => {
                if len > 0 {
                    let a = a.index(len);
                    b[a] = *v;
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn kir_token() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "graph",
            "input",
            "weight",
            "output",
            "%x",
            "%y",
            "%\"a b\"",
            "%h.1",
            "f32",
            "i8",
            "i4",
            "bf16",
            "{",
            "}",
            "[",
            "]",
            "(",
            ")",
            "<",
            ">",
            ",",
            "=",
            ":",
            "-",
            "\n",
            "// c\n",
            "quant",
            "per_tensor",
            "per_channel",
            "group",
            "block",
            "axis",
            "scale",
            "zero",
            "global",
            "packing",
            "msb_first",
            "packed",
            "nchw",
            "nhwc",
            "row_major",
            "inf",
            "nan",
            "true",
            "false",
            "tanh",
            "batch",
            "0",
            "1",
            "-1",
            "64",
            "9223372036854775807",
            "18446744073709551615",
            "1e-5",
            "1e999",
            "\"s\"",
        ])
        .prop_map(str::to_string),
        select(op_names()),
        select(attr_names()),
        any::<i64>().prop_map(|i| i.to_string()),
    ]
}

// ---- the tests -----------------------------------------------------------

#[test]
fn the_seeds_are_handled() {
    for (name, src) in kiln_examples() {
        if let Err(f) = compile_source("robust.kiln", src, &root().join("examples")) {
            panic!("{name}:\n{}", f.render());
        }
    }
    for (name, src) in kiln_sources() {
        check_kiln_in(dir_of(name), src).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, src) in kir_sources() {
        check_kir(src).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The generated models exercise the lowering, not only the parser: a
/// share of them must compile.
#[test]
fn some_generated_models_compile() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new(config(200));
    let strategy = plausible_program();
    let n = 200;
    let ok = (0..n)
        .filter(|_| {
            let src = strategy.new_tree(&mut runner).expect("a program").current();
            catch_unwind(AssertUnwindSafe(|| {
                compile_source("robust.kiln", &src, &root().join("examples")).is_ok()
            }))
            .unwrap_or(false)
        })
        .count();
    assert!(ok * 3 >= n, "only {ok} of {n} generated models compile");
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn kiln_token_soup(src in soup(kiln_token(), 48)) {
        check_kiln(&src).map_err(|e| TestCaseError::fail(format!("{e}\nsource:\n{src}")))?;
    }

    #[test]
    fn kiln_token_soup_in_a_model(body in soup(kiln_token(), 32)) {
        let src = format!("model m {{\n    input x: f32[batch, 64]\n    {body}\n}}\n");
        check_kiln(&src).map_err(|e| TestCaseError::fail(format!("{e}\nsource:\n{src}")))?;
    }

    #[test]
    fn kiln_plausible_models(src in plausible_program()) {
        check_kiln(&src).map_err(|e| TestCaseError::fail(format!("{e}\nsource:\n{src}")))?;
    }

    #[test]
    fn kiln_generated_models(src in program()) {
        check_kiln(&src).map_err(|e| TestCaseError::fail(format!("{e}\nsource:\n{src}")))?;
    }

    #[test]
    fn kiln_mutated_examples(
        seed in any::<Index>(),
        muts in prop::collection::vec(mutation(kiln_token()), 1..6),
    ) {
        let (name, base) = seed.get(kiln_sources());
        let src = apply(base, &muts);
        check_kiln_in(dir_of(name), &src)
            .map_err(|e| TestCaseError::fail(format!("{e}\nmutated {name}:\n{src}")))?;
    }

    #[test]
    fn kir_token_soup(src in soup(kir_token(), 48)) {
        check_kir(&src).map_err(|e| TestCaseError::fail(format!("{e}\nsource:\n{src}")))?;
    }

    #[test]
    fn kir_mutated_files(
        seed in any::<Index>(),
        muts in prop::collection::vec(mutation(kir_token()), 1..6),
    ) {
        let (name, base) = seed.get(kir_sources());
        let src = apply(base, &muts);
        check_kir(&src)
            .map_err(|e| TestCaseError::fail(format!("{e}\nmutated {name}:\n{src}")))?;
    }
}

// ---- fixed bugs ----------------------------------------------------------

#[test]
fn kir_deeply_nested_attribute_lists_are_an_error() {
    let n = 100_000;
    let src = format!(
        "graph g {{\n  input %x: f32[4]\n  %y: f32[4] = relu(%x) {{a = {}{}}}\n  output y = %y\n}}\n",
        "[".repeat(n),
        "]".repeat(n)
    );
    check_kir(&src).unwrap();
    let e = parse(&src).unwrap_err();
    assert!(e.message.contains("nest"), "{e}");
}

// ---- inputs that once panicked, aborted or hung ---------------------------
//
// Each was found by the fuzzer or the generators above. Each must now give
// an error that says what is wrong.

/// The rendered errors for `src`, after [`check_kiln`]'s checks; panics if
/// the model compiles.
fn kiln_errors(src: &str) -> String {
    check_kiln(src).unwrap();
    match compile_source("robust.kiln", src, &root().join("examples")) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(failed) => failed.render(),
    }
}

const TAIL: &str = "model m {\n    input x: f32[4]\n    output y = x\n}\n";

/// Constant folding computed `i64::MIN % -1` (frontend/lower.rs).
#[test]
fn const_division_overflow_is_an_error() {
    let e = kiln_errors(&format!(
        "const a = (-9223372036854775807 - 1) / -1\n{TAIL}"
    ));
    assert!(e.contains("overflow") || e.contains("does not fit"), "{e}");
}

/// Negating the constant `i64::MIN` (frontend/lower.rs).
#[test]
fn const_negate_overflow_is_an_error() {
    let e = kiln_errors(&format!("const a = -(-9223372036854775807 - 1)\n{TAIL}"));
    assert!(e.contains("does not fit in a 64-bit integer"), "{e}");
}

/// An index of `i64::MAX` on a symbolic axis computed the end of its
/// one-element slice as `i + 1` (frontend/lower.rs).
#[test]
fn index_overflow_on_a_symbolic_axis_is_an_error() {
    let e = kiln_errors(
        "model m {\n    input x: f32[batch, 64]\n    output y = x[9223372036854775807]\n}\n",
    );
    assert!(e.contains("out of range"), "{e}");
}

/// A slice step near `i64::MAX` overflowed in `slice_range`
/// (dialect/src/infer.rs); such a step takes the first element only.
#[test]
fn huge_slice_steps_take_one_element() {
    for src in [
        "model m {\n    input x: f32[4]\n    output y = x[0:4:9223372036854775807]\n}\n",
        "model m {\n    input x: f32[4]\n    output y = x[::-9223372036854775807]\n}\n",
    ] {
        check_kiln(src).unwrap();
        let c = compile_source("robust.kiln", src, &root().join("examples"))
            .unwrap_or_else(|f| panic!("{}", f.render()));
        let text = print(&c.graph);
        assert!(text.contains("f32[1]"), "{text}");
    }
    check_kir(
        "graph g {\n  input %x: f32[4]\n  %y: f32[1] = slice(%x) {axes = [0], starts = [0], ends = [4], steps = [9223372036854775807]}\n  output y = %y\n}\n",
    )
    .unwrap();
    let g = parse(
        "graph g {\n  input %x: f32[4]\n  %y: f32[1] = slice(%x) {axes = [0], starts = [3], ends = [-5], steps = [-9223372036854775807]}\n  output y = %y\n}\n",
    )
    .unwrap();
    assert_eq!(verify(&g), Ok(()));
}

/// A quantized operand whose scheme has an axis past its rank: the verifier
/// went on to the `dequantize` that uses it and indexed past the shape in
/// `QuantScheme::scale_shape` (dialect/src/quant.rs).
#[test]
fn dequantize_of_a_malformed_quant_type_is_an_error() {
    for src in [
        "graph g {\n  weight %q: i8[4] quant<per_channel(axis = 1), scale = f32>\n  weight %s: f32[4]\n  %d: f32[4] = dequantize(%q, %s) {dtype = f32}\n  output y = %d\n}\n",
        "graph g {\n  weight %q: i4[6] quant<group(2, axis = 5), scale = bf16>\n  weight %s: bf16[3]\n  %d: bf16[6] = dequantize(%q, %s) {dtype = bf16}\n  output y = %d\n}\n",
    ] {
        check_kir(src).unwrap();
        let errors = verify(&parse(src).unwrap()).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("dequantize") && e.contains("axis")),
            "{text:?}"
        );
    }
}

/// Long operator chains overflowed the stack in the recursive lowering (a
/// process abort, which `catch_unwind` cannot catch). The parser now stops
/// at 256 levels.
#[test]
fn deep_expressions_are_an_error() {
    let n = 20_000;
    for expr in [
        "x + ".repeat(n) + "x",
        "-".repeat(n) + "x",
        "[".repeat(n) + &"]".repeat(n),
    ] {
        let e = kiln_errors(&format!(
            "model m {{\n    input x: f32[4]\n    output y = {expr}\n}}\n"
        ));
        assert!(e.contains("nested more than 256 levels deep"), "{e}");
    }
    // At the bound, an expression still compiles.
    let sum = format!(
        "model m {{\n    input x: f32[4]\n    output y = {}x\n}}\n",
        "x + ".repeat(255)
    );
    check_kiln(&sum).unwrap();
    assert!(compile_source("robust.kiln", &sum, &root().join("examples")).is_ok());
}

/// Deeply nested loops recursed once per level in the lowering.
#[test]
fn deeply_nested_loops_are_an_error() {
    let n = 10_000;
    let src = format!(
        "model m {{\n    input x: f32[4]\n{}{}    output y = x\n}}\n",
        "for i in 0..1 {\n".repeat(n),
        "}\n".repeat(n)
    );
    let e = kiln_errors(&src);
    assert!(e.contains("nested more than 64 deep"), "{e}");
}

/// Loops were unrolled without a bound: an empty loop of 10^9 iterations
/// kept `compile_source` busy for minutes. So did blocks instantiated in
/// nested loops.
#[test]
fn huge_loops_are_an_error() {
    let e = kiln_errors(
        "model m {\n    input x: f32[4]\n    for i in 0..1000000000 {\n    }\n    output y = x\n}\n",
    );
    assert!(e.contains("unrolled"), "{e}");
    let start = std::time::Instant::now();
    let e = kiln_errors(
        "block b(x) {\n    return x\n}\nmodel m {\n    input x: f32[4]\n    for i in 0..2000 {\n        for j in 0..2000 {\n            let z = b(x)\n        }\n    }\n    output y = x\n}\n",
    );
    assert_eq!(
        e.matches("error:").count(),
        1,
        "one error for the model:\n{e}"
    );
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
}
