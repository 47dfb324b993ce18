//! `gatehouse completions` and `gatehouse man` from the real binary: bash
//! loads the completion script and completes subcommands with it; the man
//! pages are written one per command.

use std::process::Command;

use crate::common::broker::BIN;

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completes_subcommands_with_the_generated_script() {
    let script = run(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.bash");
    std::fs::write(&file, script).unwrap();
    // Complete `gatehouse cert i<TAB>` the way bash's completion does.
    let probe = format!(
        "source {}; COMP_WORDS=(gatehouse cert i); COMP_CWORD=2; COMP_LINE='gatehouse cert i'; COMP_POINT=16; _gatehouse gatehouse i cert; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(words.trim(), "issue", "{words}");
    for shell in ["zsh", "fish"] {
        let s = run(&["completions", shell]);
        assert!(s.contains("server-renew"), "{shell}: {s}");
    }
}

#[test]
fn man_pages_one_per_command() {
    let page = run(&["man"]);
    assert!(page.starts_with(".ie"), "{page}");
    assert!(page.contains(".TH gatehouse 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", dir.path().to_str().unwrap()]);
    for name in [
        "gatehouse.1",
        "gatehouse-cert-issue.1",
        "gatehouse-log-query.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.contains(".SH OPTIONS"), "{name}: {text}");
    }
    let issue = std::fs::read_to_string(dir.path().join("gatehouse-cert-issue.1")).unwrap();
    assert!(issue.contains("Validity in days"), "{issue}");
}
