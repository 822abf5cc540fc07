//! `strata build`: real Dockerfiles built on a busybox base (busybox-static, imported as an
//! OCI image), and the results run. Needs root, /dev/fuse and /bin/busybox; skips loudly.

mod build_env;
mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::process::Stdio;
use std::time::{Duration, Instant};

use build_env::{Env, outcomes};

#[test]
fn course_quickstart_builds_and_runs() {
    let Some(env) = Env::new() else { return };
    env.base("alpine");
    let ctx = env.context(
        "quickstart",
        &[
            (
                "quickstart.sh",
                "#!/bin/sh\necho \"Hello, world! The time is $(date).\"\n",
            ),
            (
                "Dockerfile",
                "FROM alpine\nCOPY quickstart.sh /\nCMD [\"/quickstart.sh\"]\n",
            ),
        ],
    );
    fs::set_permissions(ctx.join("quickstart.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let layout = env.path("qs-layout");
    let archive = env.path("qs.tar");
    let (id, _) = env.build_ok(
        &ctx,
        &[
            "-t",
            "gcr.io/local/quickstart-image",
            "--output",
            &format!("oci:{}", layout.display()),
        ],
    );
    // Also written as an OCI layout (and, rebuilt from the cache, as an OCI archive).
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let out = format!("oci-archive:{}", archive.display());
    env.build_ok(
        &ctx,
        &["-t", "gcr.io/local/quickstart-image", "--output", &out],
    );
    assert!(fs::metadata(&archive).unwrap().len() > 1000);
    let out = env.run_ok("gcr.io/local/quickstart-image", &[]);
    assert!(out.starts_with("Hello, world! The time is "), "{out:?}");
    let doc = env.inspect("gcr.io/local/quickstart-image");
    assert_eq!(doc["id"], id);
    // The base's layer plus the COPY's; CMD changed only the config.
    assert_eq!(doc["layers"].as_array().unwrap().len(), 2);
    let hist = doc["config"]["history"].as_array().unwrap();
    assert_eq!(hist.len(), 3);
    assert_eq!(hist[2]["empty_layer"], true);
    assert!(hist[1].get("empty_layer").is_none());
    env.assert_clean();
}

/// The course's four-instruction example. busybox has no make and no python, so the RUN
/// step runs a small build script with busybox's sh (it "compiles" app.sh.in into app.sh),
/// and CMD runs the result with sh; the shape (FROM, COPY the app, RUN a build, CMD in shell
/// form) is the course's.
#[test]
fn course_four_instructions_build_and_run() {
    let Some(env) = Env::new() else { return };
    env.base("ubuntu:18.04");
    let ctx = env.context(
        "four",
        &[
            (
                "Dockerfile",
                "FROM ubuntu:18.04\nCOPY . /app\nRUN sh /app/make.sh /app\nCMD sh /app/app.sh\n",
            ),
            (
                "make.sh",
                "set -e\nsed 's/@GREETING@/built by make.sh/' \"$1/app.sh.in\" > \"$1/app.sh\"\n",
            ),
            ("app.sh.in", "echo \"app: @GREETING@\"\n"),
        ],
    );
    env.build_ok(&ctx, &["-t", "course/app:1", "-t", "course/app:latest"]);
    assert_eq!(env.run_ok("course/app:1", &[]), "app: built by make.sh\n");
    assert_eq!(env.run_ok("course/app", &[]), "app: built by make.sh\n");
    let doc = env.inspect("course/app:1");
    assert_eq!(
        doc["layers"].as_array().unwrap().len(),
        3,
        "base, COPY, RUN"
    );
    assert_eq!(
        doc["config"]["config"]["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "sh /app/app.sh"])
    );
    env.assert_clean();
}

#[test]
fn cache_reuse_touch_edit_and_build_args() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "cache",
        &[
            (
                "Dockerfile",
                "FROM busybox\nARG FLAVOUR=plain\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy.txt\n\
                 RUN echo \"$FLAVOUR\" > /flavour\nCMD [\"cat\", \"/flavour\"]\n",
            ),
            ("a.txt", "one\n"),
        ],
    );
    let (id1, _) = env.build_ok(&ctx, &["-t", "c:1"]);
    let (id2, err) = env.build_ok(&ctx, &["-t", "c:1"]);
    assert_eq!(id1, id2, "a rebuild with no change gives the same image");
    let o = outcomes(&err);
    assert_eq!(o.len(), 5);
    assert!(o.iter().all(|(_, r)| *r == "CACHED"), "{o:?}");

    // A new mtime is no change.
    let f = fs::File::options()
        .append(true)
        .open(ctx.join("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(100))
        .unwrap();
    drop(f);
    let (id3, err) = env.build_ok(&ctx, &["-t", "c:1"]);
    assert_eq!(id3, id1);
    assert!(outcomes(&err).iter().all(|(_, r)| *r == "CACHED"));

    // An edit reruns from that COPY.
    fs::write(ctx.join("a.txt"), "two\n").unwrap();
    let (id4, err) = env.build_ok(&ctx, &["-t", "c:1"]);
    assert_ne!(id4, id1);
    let o = outcomes(&err);
    let ran: Vec<&str> = o.iter().map(|(_, r)| *r).collect();
    assert_eq!(ran, ["CACHED", "DONE", "DONE", "DONE", "DONE"], "{o:?}");
    assert_eq!(env.run_ok("c:1", &["cat", "/copy.txt"]), "two\n");

    // A new --build-arg value reruns from the first step that uses it (RUN sees every ARG).
    let (_, err) = env.build_ok(&ctx, &["-t", "c:2", "--build-arg", "FLAVOUR=spicy"]);
    let ran: Vec<&str> = outcomes(&err).iter().map(|(_, r)| *r).collect();
    assert_eq!(ran, ["CACHED", "CACHED", "DONE", "DONE", "DONE"]);
    assert_eq!(env.run_ok("c:2", &[]), "spicy\n");

    // The cache survives removing the tag, --no-cache ignores it, prune drops it.
    assert!(
        env.strata()
            .args(["image", "rm", "c:1"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let (_, err) = env.build_ok(&ctx, &["-t", "c:1"]);
    assert!(outcomes(&err).iter().all(|(_, r)| *r == "CACHED"));
    let (_, err) = env.build_ok(&ctx, &["-t", "c:1", "--no-cache"]);
    assert!(outcomes(&err).iter().all(|(_, r)| *r == "DONE"));
    assert!(
        env.strata()
            .args(["image", "prune"])
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(!env.path("store/build-cache").exists());
    assert_eq!(
        env.run_ok("c:1", &["cat", "/copy.txt"]),
        "two\n",
        "images keep their layers"
    );
    env.assert_clean();
}

#[test]
fn multi_stage_target_and_unused_stages() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "multi",
        &[(
            "Dockerfile",
            "ARG BASE=busybox\nFROM $BASE AS builder\nRUN mkdir /out && echo compiled > /out/bin\n\
             FROM busybox AS never\nRUN false\n\
             FROM busybox AS other\nRUN echo other > /o\n\
             FROM scratch\nCOPY --from=builder /out/bin /app/bin\nCOPY --from=0 /bin/busybox /bin/busybox\n\
             COPY --from=other /o /app/o\n\
             ENTRYPOINT [\"/bin/busybox\", \"cat\"]\nCMD [\"/app/bin\"]\n",
        )],
    );
    let (_, err) = env.build_ok(
        &ctx,
        &["-t", "m:1", "--iidfile", env.path("iid").to_str().unwrap()],
    );
    assert!(
        !err.contains("RUN false"),
        "a stage the target does not need is not built: {err}"
    );
    assert_eq!(env.run_ok("m:1", &[]), "compiled\n");
    // `builder` and `other` are independent: built side by side, both copied from.
    assert_eq!(env.run_ok("m:1", &["/app/o"]), "other\n");
    let iid = fs::read_to_string(env.path("iid")).unwrap();
    assert_eq!(env.inspect("m:1")["id"], iid.trim());
    // Only what the final stage copied: three layers from scratch.
    assert_eq!(env.inspect("m:1")["layers"].as_array().unwrap().len(), 3);
    env.build_ok(&ctx, &["-t", "m:builder", "--target", "builder"]);
    assert_eq!(env.run_ok("m:builder", &["cat", "/out/bin"]), "compiled\n");
    let o = env.build(&ctx, &["--target", "nosuch"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--target \"nosuch\": no such stage"));
    env.assert_clean();
}

#[test]
fn config_instructions_and_entrypoint_rules() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "config",
        &[(
            "Dockerfile",
            "FROM busybox\nENV A=1 B=\"two words\"\nENV C=${A}-$B\nLABEL org.x=\"y z\" v=$A\n\
             EXPOSE 80 53/udp\nVOLUME [\"/data\"]\nSTOPSIGNAL SIGINT\nWORKDIR /srv\nWORKDIR sub\n\
             USER www:staff\nMAINTAINER someone\nHEALTHCHECK --interval=5s --retries=2 CMD true\n\
             ONBUILD RUN echo triggered > /tmp/onbuild\nENTRYPOINT echo\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "cfg:1"]);
    let c = &env.inspect("cfg:1")["config"];
    let rc = &c["config"];
    let env_list: Vec<&str> = rc["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env_list.contains(&"A=1") && env_list.contains(&"B=two words"));
    assert!(env_list.contains(&"C=1-two words"), "{env_list:?}");
    assert_eq!(rc["Labels"]["org.x"], "y z");
    assert_eq!(rc["Labels"]["v"], "1");
    assert_eq!(rc["Labels"]["maintainer"], "someone");
    assert!(rc["ExposedPorts"]["80/tcp"].is_object() && rc["ExposedPorts"]["53/udp"].is_object());
    assert!(rc["Volumes"]["/data"].is_object());
    assert_eq!(rc["StopSignal"], "SIGINT");
    assert_eq!(rc["WorkingDir"], "/srv/sub");
    assert_eq!(rc["User"], "www:staff");
    assert_eq!(
        rc["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"])
    );
    assert_eq!(rc["Healthcheck"]["Interval"], 5_000_000_000i64);
    // A shell-form ENTRYPOINT, and the base's CMD dropped by the new ENTRYPOINT.
    assert_eq!(
        rc["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "echo"])
    );
    assert!(rc["Cmd"].is_null());
    assert_eq!(
        rc["OnBuild"],
        serde_json::json!(["RUN echo triggered > /tmp/onbuild"])
    );
    // The working directory was created, and USER resolves in the image (www, group staff).
    let o = env
        .strata()
        .args([
            "run",
            "--entrypoint",
            "/bin/sh",
            "cfg:1",
            "--",
            "-c",
            "pwd; id -u; id -g",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/srv/sub\n33\n50\n");

    // ONBUILD triggers run when a later build starts from the image.
    let child = env.context("child", &[("Dockerfile", "FROM cfg:1\nUSER root\n")]);
    env.build_ok(&child, &["-t", "child:1"]);
    let o = env
        .strata()
        .args([
            "run",
            "--entrypoint",
            "",
            "child:1",
            "--",
            "cat",
            "/tmp/onbuild",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "triggered\n");
    env.assert_clean();
}

#[test]
fn copy_add_forms_ignore_chown_chmod_and_heredocs() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "copy",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY dir /d/\nCOPY *.txt /globbed/\nCOPY --chown=app:staff --chmod=750 x.sh /bin/x.sh\n\
                 ADD arch.tar.gz /unpacked/\nCOPY dir /renamed\nCOPY <<EOF /etc/motd\nhello $GREET\nEOF\n\
                 RUN <<EOF\nset -e\necho from-heredoc > /h\nEOF\n",
            ),
            ("dir/a", "A"),
            ("dir/sub/b", "B"),
            ("dir/skip.log", "no"),
            ("one.txt", "1"),
            ("two.txt", "2"),
            ("x.sh", "echo x"),
            (".dockerignore", "**/*.log\nsecret\n"),
            ("secret", "do not ship"),
        ],
    );
    // A gzip tar for ADD.
    let mut tb = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o640);
    h.set_uid(1000);
    h.set_gid(1000);
    tb.append_data(&mut h, "in/tar.txt", &b"tared"[..]).unwrap();
    fs::write(
        ctx.join("arch.tar.gz"),
        tb.into_inner().unwrap().finish().unwrap(),
    )
    .unwrap();
    env.build_ok(&ctx, &["-t", "cp:1", "--build-arg", "UNUSED=1"]);
    let script = "cat /d/a /d/sub/b; echo; ls /d; ls /globbed; stat -c '%u:%g %a' /bin/x.sh; \
                  stat -c '%u %a' /unpacked/in/tar.txt; cat /unpacked/in/tar.txt; echo; cat /renamed/a; echo; \
                  cat /etc/motd /h";
    let out = env.run_ok("cp:1", &["sh", "-c", script]);
    assert_eq!(
        out,
        "AB\na\nsub\none.txt\ntwo.txt\n1000:50 750\n1000 640\ntared\nA\nhello \nfrom-heredoc\n"
    );
    // .dockerignore: an ignored file is not a source.
    let bad = env.context("copy", &[("Dockerfile", "FROM busybox\nCOPY secret /\n")]);
    let o = env.build(&bad, &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("Dockerfile:2: COPY secret: excluded by .dockerignore")
    );
    env.assert_clean();
}

#[test]
fn bad_input_and_failing_run() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let cases: &[(&str, &str)] = &[
        (
            "FROM busybox\nFROBNICATE x\n",
            "Dockerfile:2: unknown instruction FROBNICATE: FROBNICATE x",
        ),
        (
            "FROM busybox\nCOPY missing /x\n",
            "Dockerfile:2: COPY missing: no such file or directory",
        ),
        (
            "FROM busybox\nCOPY ../x /x\n",
            "Dockerfile:2: COPY ../x: outside the build context",
        ),
        (
            "FROM busybox\nCOPY out /x\n",
            "Dockerfile:2: COPY out: leads outside the build context",
        ),
        (
            "FROM busybox\nCOPY --from=nosuch /a /b\n",
            "COPY --from=nosuch: no such stage or image",
        ),
        (
            "FROM busybox\nUSER nobody-here\nRUN true\n",
            "Dockerfile:3: USER nobody-here",
        ),
        (
            "FROM busybox\nUSER ghost:staff\n",
            "Dockerfile:2: USER ghost:staff: ",
        ),
        ("FROM nosuchimage\n", "Dockerfile:1: image \"nosuchimage\""),
        (
            "FROM busybox\nENV X=\"${Y:?must be set}\"\n",
            "Dockerfile:2: Y: must be set",
        ),
    ];
    for (i, (df, want)) in cases.iter().enumerate() {
        let ctx = env.context(&format!("bad{i}"), &[("Dockerfile", df)]);
        symlink("/etc/passwd", ctx.join("out")).unwrap();
        let o = env.build(&ctx, &["-t", "bad:1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{df:?}: {err}");
        assert!(err.contains(want), "{df:?}: wanted {want:?} in {err}");
    }
    let ctx = env.context("bad-arg", &[("Dockerfile", "FROM busybox\n")]);
    let o = env.build(&ctx, &["--build-arg", "=x"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad --build-arg \"=x\""));

    // A failing RUN: its status, no tag, the finished steps cached, nothing left behind.
    let ctx = env.context(
        "fail",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo kept > /kept\nRUN echo failing; exit 3\n",
        )],
    );
    let o = env.build(&ctx, &["-t", "fail:1"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("Dockerfile:3: RUN echo failing; exit 3: exited with status 3")
    );
    assert!(!env.has_image("fail:1") && !env.has_image("bad:1"));
    let o = env.build(&ctx, &["-t", "fail:1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        outcomes(&err).first().map(|(_, r)| *r),
        Some("CACHED"),
        "{err}"
    );
    env.assert_clean();
}

#[test]
fn source_date_epoch_gives_reproducible_images() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "repro",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY f /f\nRUN echo $(cat /f) > /g && mkdir /made\n",
            ),
            ("f", "x\n"),
        ],
    );
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let o = env
                .strata()
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["build", "--no-cache", "-q", "-t", "r:1"])
                .arg(&ctx)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(o.stderr.is_empty(), "--quiet prints only the ID");
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    let c = &env.inspect("r:1")["config"];
    assert_eq!(c["created"], "2023-11-14T22:13:20Z");
    let out = env.run_ok("r:1", &["stat", "-c", "%Y", "/made", "/g"]);
    assert_eq!(out, "1700000000\n1700000000\n");
    env.assert_clean();
}

/// An image whose symlinks point at host paths: COPY, WORKDIR and RUN resolve them inside the
/// image's root, so nothing is created on the host.
#[test]
fn hostile_base_symlinks_stay_inside() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let victim = env.path("victim");
    fs::create_dir(&victim).unwrap();
    let evil = env.context(
        "evil",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nRUN ln -s {v} /etc/evil && ln -s ../../../../../../{v} /rel\n",
                v = victim.display()
            ),
        )],
    );
    env.build_ok(&evil, &["-t", "evil:1"]);
    let ctx = env.context(
        "use-evil",
        &[
            ("Dockerfile", "FROM evil:1\nCOPY f /etc/evil/copied\nCOPY f /rel/\nWORKDIR /etc/evil/wd\nRUN touch /etc/evil/ran /rel/ran2\n"),
            ("f", "data"),
        ],
    );
    env.build_ok(&ctx, &["-t", "evil:2"]);
    let leaked: Vec<_> = fs::read_dir(&victim)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leaked.is_empty(), "created on the host: {leaked:?}");
    let inside = format!("{}/copied", victim.display());
    assert_eq!(env.run_ok("evil:2", &["cat", &inside]), "data");
    env.assert_clean();
}

/// Two builds at once over one store and one cache: both succeed, and agree.
#[test]
fn concurrent_builds_share_the_store_safely() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "conc",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a /a\nRUN cat /a > /b\nCMD [\"cat\", \"/b\"]\n",
            ),
            ("a", "same\n"),
        ],
    );
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (env, ctx) = (&env, &ctx);
                s.spawn(move || env.build_ok(ctx, &["-t", &format!("conc:{i}")]).0)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(env.run_ok("conc:0", &[]), "same\n");
    assert_eq!(env.run_ok("conc:1", &[]), "same\n");
    // Either reused the other's steps or made its own; a third build is all cached.
    let (id, err) = env.build_ok(&ctx, &["-t", "conc:2"]);
    assert!(ids.contains(&id), "{ids:?} {id}");
    assert!(outcomes(&err).iter().all(|(_, r)| *r == "CACHED"));
    env.assert_clean();
}

/// RUN has only loopback by default; `--network host` (or `RUN --network=host`) shares the
/// host's interfaces.
#[test]
fn run_network_modes() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "net",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN cat /proc/net/dev | grep -c : > /none\n\
             RUN --network=host cat /proc/net/dev | grep -c : > /host\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "net:1"]);
    let none: u32 = env
        .run_ok("net:1", &["cat", "/none"])
        .trim()
        .parse()
        .unwrap();
    let host: u32 = env
        .run_ok("net:1", &["cat", "/host"])
        .trim()
        .parse()
        .unwrap();
    let ours = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .matches(':')
        .count() as u32;
    assert_eq!(none, 1, "only lo");
    assert_eq!(host, ours, "the host's interfaces");
    let bad = env.context(
        "net-bad",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c true\n",
        )],
    );
    let o = env.build(&bad, &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("Dockerfile:2: RUN --mount=type=cache,target=/c: not supported")
    );
    env.assert_clean();
}

/// SIGINT to the builder during a RUN (what Ctrl-C sends, here to the builder alone): the
/// container is stopped, not waited for, the build exits 130 with no tag, the finished steps
/// stay cached, and nothing is left mounted or staged.
#[test]
fn sigint_during_run_stops_the_container_and_cleans_up() {
    let Some(env) = Env::new() else { return };
    env.base("busybox");
    let ctx = env.context(
        "interrupted",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo kept > /kept\nRUN echo \"$((6 * 7))-up\"; sleep 60\n",
        )],
    );
    let err_path = env.path("interrupted.err");
    let mut child = env
        .strata()
        .args(["build", "-t", "cut:1"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let started = common::wait_until(Duration::from_secs(60), || {
        // The container's own output: the step's header shows the text, not "42-up".
        fs::read_to_string(&err_path).is_ok_and(|e| e.lines().any(|l| l.ends_with("42-up")))
    });
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let sent = Instant::now();
    let mut status = None;
    common::wait_until(Duration::from_secs(30), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let err = fs::read_to_string(&err_path).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the build did not stop within 30 s of SIGINT: {err}");
    };
    assert!(started, "the RUN never started: {err}");
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "waited for the RUN"
    );
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!env.has_image("cut:1"));
    env.assert_clean();
    let fixed = env.context(
        "interrupted-fixed",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo kept > /kept\nRUN echo done\n",
        )],
    );
    let (_, err) = env.build_ok(&fixed, &["-t", "cut:1"]);
    assert_eq!(
        outcomes(&err).first().map(|(_, r)| *r),
        Some("CACHED"),
        "the finished RUN stays cached: {err}"
    );
    env.assert_clean();
}
