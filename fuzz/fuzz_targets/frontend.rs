//! Arbitrary bytes, read as UTF-8 (lossy), through the model-language
//! front-end: compiling and rendering the errors must never panic, and every
//! error must point inside the source.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let src = String::from_utf8_lossy(data);
    match kiln::frontend::compile_source("fuzz.kiln", &src, Path::new("/nonexistent-kiln-fuzz")) {
        Ok(c) => {
            let _ = kiln_dialect::text::print(&c.graph);
        }
        Err(failed) => {
            assert!(!failed.diags.is_empty(), "a failure without diagnostics");
            for d in &failed.diags {
                for (span, _) in &d.labels {
                    let text = &failed
                        .sources
                        .files
                        .get(span.file as usize)
                        .expect("span in a known file")
                        .1;
                    assert!(
                        span.start <= span.end && span.end <= text.len(),
                        "span {span:?} outside a source of {} bytes",
                        text.len()
                    );
                }
            }
            let _ = failed.render();
        }
    }
});
