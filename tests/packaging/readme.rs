//! The README is part of the interface: these tests keep it true.

use std::path::Path;

const BEGIN: &str = "<!-- attributes:begin (generated from src/volume/attributes.rs; UPDATE_README=1 cargo test --test packaging readme) -->\n";
const END: &str = "<!-- attributes:end -->";

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md is readable")
}

/// The attribute reference in the README is the table the parser uses, so
/// documentation and behaviour cannot drift apart.
#[test]
fn attribute_reference_matches_the_code() {
    let text = readme();
    let start = text
        .find(BEGIN)
        .expect("README.md has the attributes:begin marker")
        + BEGIN.len();
    let end = text[start..]
        .find(END)
        .expect("README.md has the attributes:end marker")
        + start;
    let expected = cert_csi::volume::attributes::reference_markdown();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{}{}", &text[..start], expected, &text[end..]);
        std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
            updated,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        &text[start..end],
        expected,
        "README attribute table drifted from the code; run UPDATE_README=1 cargo test --test packaging readme"
    );
    assert_eq!(
        cert_csi::volume::ATTRIBUTES.len(),
        31,
        "all 31 upstream attributes are documented"
    );
}

/// The two commands promised at the top of the README exist as written.
#[test]
fn the_two_commands_are_at_the_top() {
    let text = readme();
    let head: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("hack/test"),
        "the test command is near the top"
    );
    assert!(
        head.contains("cargo run --release --"),
        "the run command is near the top"
    );
    let ci =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    assert!(
        ci.contains("hack/test"),
        ".ci/run runs the README's test command"
    );
}

/// Every flag of every mode is documented in the README.
#[test]
fn every_flag_is_documented() {
    let text = readme();
    for mode in ["node", "controller", "demo", "sandbox"] {
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args([mode, "--help"])
            .output()
            .expect("cert-csi --help runs");
        let help = String::from_utf8_lossy(&help.stdout);
        // Option lines start with the flag (`--name` or `-x, --name`); words
        // starting with `--` inside descriptions are not flags.
        for flag in help
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
            .map(|f| f.trim_end_matches(','))
        {
            if flag == "--help" {
                continue;
            }
            assert!(
                text.contains(&format!("`{flag}`")),
                "README does not document `{flag}` of cert-csi {mode}"
            );
        }
    }
}
