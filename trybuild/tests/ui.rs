//! Compile-fail and compile-pass cases for the txmsg macros.
//!
//! See `README.md` for how to run them and how to update the `.stderr` files.

#[test]
fn transactional_message() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/transactional_message/fail/*.rs");
    t.pass("tests/ui/transactional_message/pass/*.rs");
}

#[test]
fn message_handler() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/message_handler/fail/*.rs");
    t.pass("tests/ui/message_handler/pass/*.rs");
}

#[test]
fn check_back() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/check_back/fail/*.rs");
    t.pass("tests/ui/check_back/pass/*.rs");
}
