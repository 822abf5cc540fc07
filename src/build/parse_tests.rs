//! Parser and expansion tests. The expansion vectors follow the behaviour BuildKit's
//! `frontend/dockerfile/shell/envVarTest` documents (PWD=/home, SHELL=bash, NULL="").

use super::dockerfile::{Command, Kind, parse};
use super::expand;

fn env(name: &str) -> Option<String> {
    match name {
        "PWD" => Some("/home".into()),
        "SHELL" => Some("bash".into()),
        "NULL" => Some(String::new()),
        _ => None,
    }
}

#[test]
fn expansion_vectors() {
    let ok = [
        ("hello", "hello"),
        ("he'll'o", "hello"),
        ("he\\'llo", "he'llo"),
        ("abc\\tdef", "abctdef"),
        ("\"abc\\tdef\"", "abc\\tdef"),
        ("\"abc\\\\tdef\"", "abc\\tdef"),
        ("'abc\\tdef'", "abc\\tdef"),
        ("hello\\", "hello"),
        ("hello\\\\", "hello\\"),
        ("\"hel'lo\"", "hel'lo"),
        ("'hello\\'", "hello\\"),
        ("\"''\"", "''"),
        ("$.", "$."),
        ("he$1x", "hex"),
        ("he$.x", "he$.x"),
        ("he$pwd.", "he."),
        ("he$PWD", "he/home"),
        ("he\\$PWD", "he$PWD"),
        ("he\\\\$PWD", "he\\/home"),
        ("\"he\\$PWD\"", "he$PWD"),
        ("\"he\\\\$PWD\"", "he\\/home"),
        ("\\${}", "${}"),
        ("he\\${}xx", "he${}xx"),
        ("he${hi}xx", "hexx"),
        ("he${PWD}", "he/home"),
        ("he${XXX:-000}xx", "he000xx"),
        ("he${PWD:-000}xx", "he/homexx"),
        ("he${XXX:-$PWD}xx", "he/homexx"),
        ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
        ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
        ("he${PWD?}", "he/home"),
        ("he${PWD:?}", "he/home"),
        ("he${NULL?}", "he"),
        ("he${NULL-x}", "he"),
        ("he${NULL:-x}", "hex"),
        ("he${NULL+x}", "hex"),
        ("he${NULL:+x}", "he"),
        ("he${XXX:+${PWD}}xx", "hexx"),
        ("he${PWD:+${XXX}}xx", "hexx"),
        ("he${PWD:+${SHELL}}xx", "hebashxx"),
        ("he${XXX:+000}xx", "hexx"),
        ("he${PWD:+000}xx", "he000xx"),
        ("'he${XX}'", "he${XX}"),
        ("\"he${PWD}\"", "he/home"),
        ("\"he'$PWD'\"", "he'/home'"),
        ("'$PWD'", "$PWD"),
        ("'\\$PWD'", "\\$PWD"),
        ("'\"hello\"'", "\"hello\""),
        ("he${PWD:+${PWD}:}xx", "he/home:xx"),
        ("he${XXX:-\\$PWD:}xx", "he$PWD:xx"),
        ("he${XXX:-\\${PWD}z}xx", "he${PWDz}xx"),
        ("안'녕'하세요", "안녕하세요"),
        ("안녕\\'하세요", "안녕'하세요"),
    ];
    for (input, want) in ok {
        assert_eq!(
            expand::word(input, '\\', &env).as_deref(),
            Ok(want),
            "input {input:?}"
        );
    }
    let bad = [
        "he'llo",
        "he\\\\'llo",
        "\"hello",
        "\"hello\\\"",
        "${}",
        "he${}xx",
        "he${.}",
        "he${XXX:YYY}",
        "he${XXX?}",
        "he${XXX:?}",
        "he${NULL:?}",
        "he${PWD",
        "he${PWD:=000}xx",
        "안'녕하세요",
    ];
    for input in bad {
        assert!(
            expand::word(input, '\\', &env).is_err(),
            "{input:?} should fail"
        );
    }
    assert_eq!(
        expand::word("${XXX:?must be set}", '\\', &env)
            .unwrap_err()
            .to_string(),
        "XXX: must be set"
    );
}

#[test]
fn word_splitting_and_backtick_escape() {
    let v = |n: &str| (n == "L").then(|| "a b  c".to_owned());
    assert_eq!(
        expand::words("x $L \"$L\" 'q r'", '\\', &v).unwrap(),
        ["x", "a", "b", "c", "a b  c", "q r"]
    );
    assert_eq!(expand::words("\"\" $NONE", '\\', &v).unwrap(), [""]);
    assert_eq!(expand::word("a`$L", '`', &v).unwrap(), "a$L");
    assert_eq!(expand::word("C:\\dir", '`', &v).unwrap(), "C:\\dir");
}

#[test]
fn continuations_comments_and_forms() {
    let df = parse(
        "# syntax=docker/dockerfile:1\n# escape=\\\n\n# a comment\nFROM busybox AS base\n\
         RUN echo a \\\n# dropped comment\n\n  && echo b\ncmd [\"/bin/sh\", \"-c\", \"x\"]\n\
         ENTRYPOINT not [json\nenv A=1 B=\"two words\"\nENV LEGACY value with spaces\n",
    )
    .unwrap();
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    let kinds: Vec<&Kind> = df.instructions.iter().map(|i| &i.kind).collect();
    assert!(
        matches!(kinds[0], Kind::From { image, alias: Some(a), .. } if image == "busybox" && a == "base")
    );
    assert!(
        matches!(kinds[1], Kind::Run { cmd: Command::Shell(s), .. } if s == "echo a   && echo b")
    );
    assert_eq!(df.instructions[1].line, 6);
    assert_eq!(
        kinds[2],
        &Kind::Cmd(Command::Exec(vec![
            "/bin/sh".into(),
            "-c".into(),
            "x".into()
        ]))
    );
    assert_eq!(
        kinds[3],
        &Kind::Entrypoint(Command::Shell("not [json".into()))
    );
    assert_eq!(
        kinds[4],
        &Kind::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "\"two words\"".into())
        ])
    );
    assert_eq!(
        kinds[5],
        &Kind::Env(vec![("LEGACY".into(), "value with spaces".into())])
    );
}

#[test]
fn escape_directive_and_late_directives() {
    let df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /w\n# escape=\\\n").unwrap();
    assert_eq!(df.directives.escape, '`');
    assert!(
        matches!(&df.instructions[1].kind, Kind::Run { cmd: Command::Shell(s), .. } if s == "dir c:\\   /w")
    );
    // After the first instruction a directive is a comment.
    let df = parse("FROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
    assert_eq!(df.directives.escape, '\\');
    assert_eq!(df.instructions.len(), 2);
    assert!(parse("# escape=x\nFROM a\n").is_err());
    assert!(parse("# escape=`\n# escape=\\\nFROM a\n").is_err());
}

#[test]
fn heredocs() {
    let df = parse(
        "FROM x\nRUN <<EOF\necho one\necho $HOME\nEOF\nCOPY <<-'A' <<B /dst/\n\tliteral $X\n\tA\nb\nB\nRUN echo done\n",
    )
    .unwrap();
    let Kind::Run { heredocs, .. } = &df.instructions[1].kind else {
        panic!("not RUN")
    };
    assert_eq!(heredocs.len(), 1);
    assert_eq!(heredocs[0].body, "echo one\necho $HOME\n");
    assert!(heredocs[0].expand);
    let Kind::Copy(c) = &df.instructions[2].kind else {
        panic!("not COPY")
    };
    assert_eq!(c.heredocs.len(), 2);
    assert_eq!(c.heredocs[0].name, "A");
    assert_eq!(c.heredocs[0].body, "literal $X\n");
    assert!(!c.heredocs[0].expand);
    assert_eq!(c.heredocs[1].body, "b\n");
    assert_eq!(c.args, ["/dst/"]);
    assert_eq!(df.instructions[3].line, 11);
    let e = parse("FROM x\nRUN <<EOF\nnever ends\n").unwrap_err();
    assert_eq!(e.line, 2);
}

#[test]
fn instructions_and_errors() {
    let df = parse(
        "FROM --platform=linux/amd64 img\nCOPY --from=b --chown=1:2 --chmod=640 a b* /d/\n\
         ADD [\"x y\", \"/z\"]\nARG A B=2\nLABEL a=b \"c d\"=e\nEXPOSE 80 443/udp\nVOLUME [\"/v\"]\n\
         VOLUME /a /b\nHEALTHCHECK --interval=5s CMD true\nHEALTHCHECK NONE\nONBUILD RUN x\n\
         MAINTAINER me\nSTOPSIGNAL SIGTERM\nSHELL [\"/bin/sh\", \"-ec\"]\nUSER a:b\nWORKDIR /w\n",
    )
    .unwrap();
    let k: Vec<&Kind> = df.instructions.iter().map(|i| &i.kind).collect();
    assert!(matches!(k[0], Kind::From { flags, .. } if flags[0].name == "platform"));
    let Kind::Copy(c) = k[1] else { panic!() };
    assert_eq!(c.flags.len(), 3);
    assert_eq!(c.args, ["a", "b*", "/d/"]);
    let Kind::Add(a) = k[2] else { panic!() };
    assert!(a.json && a.args == ["x y", "/z"]);
    assert_eq!(
        k[3],
        &Kind::Arg(vec![("A".into(), None), ("B".into(), Some("2".into()))])
    );
    assert_eq!(
        k[4],
        &Kind::Label(vec![
            ("a".into(), "b".into()),
            ("\"c d\"".into(), "e".into())
        ])
    );
    assert_eq!(k[5], &Kind::Expose(vec!["80".into(), "443/udp".into()]));
    assert_eq!(k[6], &Kind::Volume(vec!["/v".into()]));
    assert_eq!(k[7], &Kind::Volume(vec!["/a".into(), "/b".into()]));
    assert!(matches!(k[8], Kind::Healthcheck(h) if h.cmd.is_some()));
    assert!(matches!(k[9], Kind::Healthcheck(h) if h.cmd.is_none()));
    assert!(matches!(k[10], Kind::Onbuild(i) if i.kind.keyword() == "RUN"));
    assert_eq!(k[11], &Kind::Maintainer("me".into()));
    assert_eq!(k[13], &Kind::Shell(vec!["/bin/sh".into(), "-ec".into()]));

    for (src, line, msg) in [
        (
            "FROM a\nFROBNICATE x\n",
            2,
            "unknown instruction FROBNICATE",
        ),
        (
            "FROM a\nCOPY onlyone\n",
            2,
            "COPY needs a source and a destination",
        ),
        ("FROM\n", 1, "expected FROM IMAGE [AS NAME]"),
        ("FROM a\nSHELL sh -c\n", 2, "SHELL needs a JSON array"),
        ("FROM a\nENV\n", 2, "missing arguments"),
        (
            "FROM a\nONBUILD ONBUILD RUN x\n",
            2,
            "ONBUILD ONBUILD is not allowed",
        ),
    ] {
        let e = parse(src).unwrap_err();
        assert_eq!((e.line, e.msg.as_str()), (line, msg), "{src:?}");
        assert!(e.to_string().starts_with(&format!("Dockerfile:{line}: ")));
    }
}

/// Hostile Dockerfiles (issue 18) parse in bounded time and memory: linear in their size,
/// with no recursion the input controls. Each case must finish and give the right answer.
#[test]
fn hostile_dockerfiles_are_bounded() {
    // 100k instructions.
    let mut big = String::from("FROM scratch\n");
    for i in 0..100_000 {
        big.push_str(&format!("RUN echo {i}\n"));
    }
    let df = parse(&big).unwrap();
    assert_eq!(df.instructions.len(), 100_001);
    // One instruction continued over 100k lines (about 1 MB), with comments in between.
    let mut cont = String::from("FROM scratch\nRUN echo \\\n");
    for _ in 0..100_000 {
        cont.push_str("  word \\\n# a comment\n");
    }
    cont.push_str("  end\n");
    let df = parse(&cont).unwrap();
    assert_eq!(df.instructions.len(), 2);
    match &df.instructions[1].kind {
        Kind::Run {
            cmd: Command::Shell(s),
            ..
        } => assert!(s.ends_with("end") && s.matches("word").count() == 100_000),
        other => panic!("{other:?}"),
    }
    // A megabyte-long bad line: one error, its text cut short.
    let bad = format!("FROM scratch\nNOPE {}\n", "x".repeat(1 << 20));
    let e = parse(&bad).unwrap_err().to_string();
    assert!(e.starts_with("Dockerfile:2: "), "{}", &e[..80]);
    assert!(e.len() < 400, "{}", e.len());
    // JSON nested 100k deep is no exec form (serde_json stops at its depth limit): shell form.
    let deep = format!(
        "FROM scratch\nCMD {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let df = parse(&deep).unwrap();
    assert!(matches!(
        df.instructions[1].kind,
        Kind::Cmd(Command::Shell(_))
    ));
    // An unterminated heredoc at the end of 100k lines.
    let here = format!("FROM scratch\nRUN <<EOF\n{}", "line\n".repeat(100_000));
    assert!(
        parse(&here)
            .unwrap_err()
            .to_string()
            .contains("not terminated")
    );
}

#[test]
fn deeply_nested_substitutions_are_refused_not_recursed() {
    let nest = |n: usize| format!("{}x{}", "${A:-".repeat(n), "}".repeat(n));
    let ok = expand::word(&nest(expand::MAX_DEPTH), '\\', &env).unwrap();
    assert_eq!(ok, "x");
    for n in [expand::MAX_DEPTH + 1, 100_000] {
        let e = expand::word(&nest(n), '\\', &env).unwrap_err();
        assert!(matches!(e, expand::ExpandError::Deep), "{n}: {e}");
    }
    // Long but flat: fine.
    let flat = "$PWD".repeat(100_000);
    assert_eq!(expand::word(&flat, '\\', &env).unwrap().len(), 500_000);
}
