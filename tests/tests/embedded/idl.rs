//! The committed IDL (idl/tally.json) is what Anchor's idl-build path generates from
//! the program source. Regenerate with `scripts/idl` after changing the interface.
use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_idl_matches_the_program() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally-idl"))
        .output()
        .expect("run tally-idl");
    assert!(
        out.status.success(),
        "tally-idl failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("utf-8 IDL");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../idl/tally.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "idl/tally.json is out of date with the program: run scripts/idl and commit the result"
    );
    let idl: serde_json::Value = serde_json::from_str(&generated).expect("IDL is JSON");
    assert_eq!(idl["address"], tally::ID.to_string());
    let names: Vec<&str> = idl["instructions"]
        .as_array()
        .expect("instructions")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        names.contains(&"settle") && names.contains(&"open_job"),
        "{names:?}"
    );
}
