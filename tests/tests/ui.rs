//! Compile-time behaviour of `#[task]`: what it accepts, and where its
//! errors point.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
