//! The payment demo is a test too: its consistency check must pass.

#[test]
fn payment_demo_heals_crashes_through_the_check_back() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_txmsg-example-payment"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK: a message was published for every captured payment, once"),
        "{stdout}"
    );
    // pay-1, pay-3 (crashed after the charge, committed by the check-back), pay-5.
    assert!(
        stdout.contains(r#"published payments.charged: ["pay-1", "pay-3", "pay-5"]"#),
        "{stdout}"
    );
}
