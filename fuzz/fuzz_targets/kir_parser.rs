//! Arbitrary bytes, read as UTF-8 (lossy), through the `.kir` parser, the
//! verifier and the diagnostics renderer: none of them may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

use kiln_dialect::text::{parse, print};
use kiln_dialect::verify::{render, verify};

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    match parse(&src) {
        Err(e) => {
            assert!(
                e.span.start <= e.span.end && e.span.end <= src.len(),
                "span {:?} outside a source of {} bytes",
                e.span,
                src.len()
            );
            let _ = e.diagnostic().render("fuzz.kir", &src);
        }
        Ok(g) => match verify(&g) {
            Err(errors) => {
                let _ = render(&errors, "fuzz.kir", &src);
            }
            Ok(()) => {
                let _ = print(&g);
            }
        },
    }
});
