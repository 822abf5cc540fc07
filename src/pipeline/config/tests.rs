use super::*;

fn err(yaml: &str) -> String {
    match load(yaml) {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn course_example_parses() {
    let c = load(
        "steps:\n- name: 'gcr.io/cloud-builders/docker'\n  args: [ 'build', '-t', 'gcr.io/$PROJECT_ID/quickstart-image', '.' ]\n- name: 'gcr.io/$PROJECT_ID/quickstart-image'\n  args: ['fail']\nimages:\n- 'gcr.io/$PROJECT_ID/quickstart-image'\n",
    )
    .unwrap();
    assert_eq!(c.config.steps.len(), 2);
    assert_eq!(c.deps, vec![vec![], vec![0]]);
    assert_eq!(c.build_timeout, DEFAULT_TIMEOUT);
    assert!(c.warnings.is_empty());
}

#[test]
fn wait_for_rules() {
    let c = load(
        "steps:\n- {name: a, id: A}\n- {name: b, id: B, waitFor: ['-']}\n- {name: c, waitFor: [A, B]}\n- {name: d}\n",
    )
    .unwrap();
    assert_eq!(c.deps, vec![vec![], vec![], vec![0, 1], vec![0, 1, 2]]);
    let e = err("steps:\n- {name: a, id: A, waitFor: [B]}\n- {name: b, id: B}\n");
    assert!(
        e.contains("forward reference") && e.contains("\"B\""),
        "{e}"
    );
    let e = err("steps:\n- {name: a, id: A, waitFor: [A]}\n");
    assert!(e.contains("cycle"), "{e}");
    let e = err("steps:\n- {name: a, waitFor: [nope]}\n");
    assert!(e.contains("no step has that id"), "{e}");
    let e = err("steps:\n- {name: a, id: A}\n- {name: b, id: A}\n");
    assert!(e.contains("duplicate id \"A\""), "{e}");
    let e = err("steps:\n- {name: a, id: '-'}\n");
    assert!(e.contains("reserved"), "{e}");
}

#[test]
fn yaml_errors_have_lines_and_unknown_fields_are_named() {
    let e = err("steps:\n- name: a\n  args: [unclosed\n");
    assert!(e.contains("line"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    let e = err("steps:\n- name: a\n  argz: [x]\n");
    assert!(
        e.contains("unknown field `argz`") && e.contains("line 3"),
        "{e}"
    );
    let e = err("steps:\n- name: a\nbogus: 1\n");
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = err("steps:\n- name: a\noptions:\n  nope: 1\n");
    assert!(e.contains("unknown field `nope`"), "{e}");
    assert!(err("").contains("bad config"));
}

#[test]
fn field_rules() {
    assert!(err("steps: []\n").contains("no steps"));
    assert!(err("steps:\n- name: ''\n").contains("no name"));
    assert!(err("steps:\n- {name: a, env: [NOEQUALS]}\n").contains("KEY=VALUE"));
    assert!(err("steps:\n- {name: a, script: x, args: [y]}\n").contains("script and args"));
    assert!(err("steps:\n- {name: a, dir: '../x'}\n").contains("'..'"));
    assert!(err("steps:\n- {name: a, timeout: 10}\n").contains("bad duration"));
    assert!(err("steps:\n- {name: a, timeout: 10m}\n").contains("bad duration"));
    assert!(err("timeout: 5s\nsteps:\n- {name: a, timeout: 6s}\n").contains("longer than"));
    let c = load("timeout: 2.5s\nsteps:\n- {name: a, timeout: 1.5s}\n").unwrap();
    assert_eq!(c.build_timeout, Duration::from_millis(2500));
    assert_eq!(c.step_timeouts, [Some(Duration::from_millis(1500))]);
}

#[test]
fn substitution_keys() {
    load("steps:\n- name: a\nsubstitutions:\n  _OK_1: x\n").unwrap();
    let e = err("steps:\n- name: a\nsubstitutions:\n  _lower: x\n");
    assert!(e.contains("_lower"), "{e}");
    let e = err("steps:\n- name: a\nsubstitutions:\n  NOUNDERSCORE: x\n");
    assert!(e.contains("NOUNDERSCORE"), "{e}");
    // Git built-ins may be overridden, the build's own may not.
    load("steps:\n- name: a\nsubstitutions:\n  BRANCH_NAME: x\n").unwrap();
    assert!(err("steps:\n- name: a\nsubstitutions:\n  PROJECT_ID: x\n").contains("PROJECT_ID"));
}

#[test]
fn volumes() {
    let two = "steps:\n- {name: a, volumes: [{name: vol, path: /v}]}\n- {name: b, volumes: [{name: vol, path: /v}]}\n";
    load(two).unwrap();
    let e = err("steps:\n- {name: a, volumes: [{name: vol, path: /v}]}\n- {name: b}\n");
    assert!(e.contains("one step only"), "{e}");
    let e = err(&two.replace("/v}]}\n- {name: b", "/workspace}]}\n- {name: b"));
    assert!(e.contains("reserved"), "{e}");
    let e = err(&two.replace("path: /v", "path: rel"));
    assert!(e.contains("absolute"), "{e}");
    let e = err(&two.replace("name: vol", "name: '-x'"));
    assert!(e.contains("volume name"), "{e}");
    let e = err("steps:\n- {name: a}\noptions:\n  volumes: [{name: vol, path: /v}]\n");
    assert!(e.contains("fewer than two steps"), "{e}");
}

#[test]
fn cloud_only_fields_warn() {
    let c = load(
        "steps:\n- {name: a, secretEnv: [X]}\nserviceAccount: sa\nlogsBucket: gs://b\navailableSecrets: {secretManager: []}\noptions:\n  machineType: E2_HIGHCPU_8\n",
    )
    .unwrap();
    let w = c.warnings.join("\n");
    for f in [
        "serviceAccount",
        "logsBucket",
        "availableSecrets",
        "machineType",
        "secretEnv",
    ] {
        assert!(w.contains(f), "no warning for {f}: {w}");
    }
}
