use super::*;
use proptest::prelude::*;

fn norm(p: &str) -> Result<String, PathError> {
    normalize_path(p, &PathRules::default()).map(Cow::into_owned)
}

#[test]
fn decodes_unreserved_and_uppercases_other_escapes() {
    assert_eq!(norm("/api/%76%31/pro%6Aects").unwrap(), "/api/v1/projects");
    assert_eq!(norm("/api/adm%69n/users").unwrap(), "/api/admin/users");
    assert_eq!(norm("/a%2d%2E%5f%7eb").unwrap(), "/a-._~b");
    assert_eq!(norm("/a%3a%40b%20c%25").unwrap(), "/a%3A%40b%20c%25");
    assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    assert_eq!(norm("/café").unwrap(), "/caf%C3%A9");
    // Plain paths come back borrowed: no allocation on the common request.
    assert!(matches!(
        normalize_path("/v1/infer", &PathRules::default()),
        Ok(Cow::Borrowed("/v1/infer"))
    ));
}

#[test]
fn merges_slashes_unless_told_not_to() {
    assert_eq!(norm("//api//admin///users/").unwrap(), "/api/admin/users/");
    let keep = PathRules {
        merge_slashes: false,
        ..PathRules::default()
    };
    assert_eq!(normalize_path("/a//b", &keep).unwrap(), "/a//b");
    assert_eq!(
        normalize_path("/a//../b", &keep),
        Err(PathError::DotSegment)
    );
}

#[test]
fn each_refusal_has_its_own_reason() {
    let cases = [
        ("/api/admin%2fusers", PathError::EscapedSlash),
        ("/api/admin%5Cusers", PathError::EscapedSlash),
        ("/api/admin\\users", PathError::Backslash),
        ("/api/admin%00/users", PathError::ControlCharacter),
        ("/api/admin%1f", PathError::ControlCharacter),
        ("/api/admin%7F", PathError::ControlCharacter),
        ("/api/admin\t", PathError::ControlCharacter),
        ("/api/admin;/users", PathError::PathParameter),
        ("/api/admin;jsessionid=1", PathError::PathParameter),
        ("/api/%c0%afadmin/users", PathError::InvalidUtf8),
        ("/api/%e0%80%af", PathError::InvalidUtf8),
        ("/api/%ed%a0%80", PathError::InvalidUtf8),
        ("/api/%c3", PathError::InvalidUtf8),
        ("/api/%c3x", PathError::InvalidUtf8),
        ("/api/%ff", PathError::InvalidUtf8),
        ("/api/%u0061dmin", PathError::InvalidEscape),
        ("/api/%zz", PathError::InvalidEscape),
        ("/api/%4", PathError::InvalidEscape),
        ("/api/%", PathError::InvalidEscape),
        ("/api/../admin", PathError::DotSegment),
        ("/api/./admin", PathError::DotSegment),
        ("/api/%2e%2E/admin", PathError::DotSegment),
        ("/api/.%2e", PathError::DotSegment),
        ("/api/%2e", PathError::DotSegment),
        ("/..", PathError::DotSegment),
        ("*", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
    ];
    for (path, want) in cases {
        assert_eq!(norm(path), Err(want), "{path}");
    }
    // Reasons differ: an escaped slash is not reported as a dot segment any more.
    assert_ne!(
        PathError::EscapedSlash.as_str(),
        PathError::DotSegment.as_str()
    );
    for e in [PathError::InvalidEscape, PathError::PathParameter] {
        assert_eq!(e.as_str(), e.to_string());
    }
}

#[test]
fn opt_outs_keep_what_they_name() {
    let keep = PathRules {
        escaped_slashes: EscapedSlashes::Keep,
        path_params: PathParams::Keep,
        merge_slashes: true,
    };
    assert_eq!(normalize_path("/a%2fb%5cc", &keep).unwrap(), "/a%2Fb%5Cc");
    assert_eq!(normalize_path("/a;v=1/b", &keep).unwrap(), "/a;v=1/b");
    // A servlet container reads `..;x` as `..`.
    assert_eq!(
        normalize_path("/a/..;x/b", &keep),
        Err(PathError::DotSegment)
    );
    // Raw backslashes stay refused whatever the settings.
    assert_eq!(normalize_path("/a\\b", &keep), Err(PathError::Backslash));
}

#[test]
fn hosts_ignore_case_port_and_one_trailing_dot() {
    assert_eq!(normalize_host("Admin.Internal.").unwrap(), "admin.internal");
    assert_eq!(
        normalize_host("admin.internal:8080").unwrap(),
        "admin.internal"
    );
    assert_eq!(
        normalize_host("admin.internal.:8080").unwrap(),
        "admin.internal"
    );
    assert_eq!(normalize_host("127.0.0.1:80").unwrap(), "127.0.0.1");
    // RFC 3986 allows an empty port.
    assert_eq!(normalize_host("admin.internal:").unwrap(), "admin.internal");
    assert_eq!(normalize_host("[::1]:8080").unwrap(), "[::1]");
    assert_eq!(normalize_host("[0:0::1]").unwrap(), "[::1]");
    for bad in [
        "",
        ".",
        "admin.internal..",
        "admin..internal",
        "user@admin.internal",
        "admin%2einternal",
        "admin.internal:80x",
        "admin internal",
        "[::1",
        "[nope]",
        "a:b:c",
        "admin.internal/x",
    ] {
        assert_eq!(normalize_host(bad), Err(HostError), "{bad:?}");
    }
}

#[test]
fn patterns_match_escaped_sub_delimiters() {
    assert_eq!(match_pattern("/v1/m:p", "/v1/m%3Ap"), Some(9));
    assert_eq!(match_pattern("/v1/m:p", "/v1/m:p/x"), Some(7));
    assert_eq!(match_pattern("/v1/m:p", "/v1/m%3Bp"), None);
    assert_eq!(match_pattern("/api/admin", "/api/adm"), None);
    assert!(check_pattern("/v1/models:predict").is_ok());
    assert!(check_pattern("/api/%61dmin").is_err());
    assert!(check_pattern("/api//admin").is_err());
    assert!(check_pattern("/api/../admin").is_err());
    assert!(check_pattern("/api;x").is_err());
    assert!(check_pattern("api").is_err());
}

/// Pieces that build paths full of the known bypass classes, plus plain text.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("/".to_string()),
        1 => Just("//".to_string()),
        2 => Just("api".to_string()),
        2 => Just("admin".to_string()),
        1 => Just("users".to_string()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just("%2e".to_string()),
        1 => Just("%2E%2e".to_string()),
        1 => Just("%2f".to_string()),
        1 => Just("%5C".to_string()),
        1 => Just("\\".to_string()),
        1 => Just(";".to_string()),
        1 => Just(";jsessionid=1".to_string()),
        1 => Just("%3b".to_string()),
        1 => Just("%61".to_string()),
        1 => Just("%69".to_string()),
        1 => Just("%6D%69n".to_string()),
        1 => Just("%61dmin".to_string()),
        1 => Just("adm%69n".to_string()),
        1 => Just("%61%64%6d%69%6e".to_string()),
        1 => Just("%61pi".to_string()),
        1 => Just("m%3Ap".to_string()),
        1 => Just("m:p".to_string()),
        1 => Just("%".to_string()),
        1 => Just("%4".to_string()),
        1 => Just("%zz".to_string()),
        1 => Just("%u0061".to_string()),
        1 => Just("%00".to_string()),
        1 => Just("%1f".to_string()),
        1 => Just("%7f".to_string()),
        1 => Just("%c0%af".to_string()),
        1 => Just("%c3%a9".to_string()),
        1 => Just("%c3".to_string()),
        1 => Just("é".to_string()),
        1 => Just("%3a".to_string()),
        1 => Just(":".to_string()),
        1 => Just("%25".to_string()),
        1 => Just("%252e".to_string()),
        1 => Just("~".to_string()),
        2 => "[a-zA-Z0-9._~!$&'()*+,=:@-]{1,4}",
        1 => "%[0-9a-fA-F]{2}",
    ]
}

/// Paths made of the known bypass classes (for other modules' property tests too).
pub(crate) fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..10).prop_map(|v| format!("/{}", v.concat()))
}

fn any_rules() -> impl Strategy<Value = PathRules> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(m, e, p)| PathRules {
        merge_slashes: m,
        escaped_slashes: if e {
            EscapedSlashes::Keep
        } else {
            EscapedSlashes::Reject
        },
        path_params: if p {
            PathParams::Keep
        } else {
            PathParams::Reject
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn normalization_is_idempotent(raw in raw_path(), rules in any_rules()) {
        if let Ok(once) = normalize_path(&raw, &rules) {
            let twice = normalize_path(&once, &rules);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
        }
    }

    #[test]
    fn normalized_paths_have_no_ambiguity_left(raw in raw_path()) {
        if let Ok(p) = norm(&raw) {
            let b = p.as_bytes();
            prop_assert!(!p.contains("//"), "{}", p);
            prop_assert!(p.starts_with('/'));
            prop_assert!(!has_dot_segment(&p, &PathRules::default()), "{}", p);
            prop_assert!(!p.contains('\\') && !p.contains(';'), "{}", p);
            for (i, &c) in b.iter().enumerate() {
                prop_assert!((0x21..0x7f).contains(&c), "{:?} has byte {:#x}", p, c);
                if c == b'%' {
                    let v = decode_escape(b, i);
                    prop_assert!(v.is_some(), "{}", p);
                    let v = v.unwrap();
                    prop_assert!(!is_unreserved(v), "{} keeps an encoded unreserved char", p);
                    prop_assert!(v >= 0x20 && v != 0x7f, "{} keeps an encoded control char", p);
                    prop_assert!(v != b'/' && v != b'\\', "{}", p);
                    prop_assert!(b[i + 1..i + 3].iter().all(|h| !h.is_ascii_lowercase()), "{}", p);
                }
            }
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(raw in "\\PC{0,40}", host in "\\PC{0,20}") {
        let _ = normalize_path(&raw, &PathRules::default());
        let _ = normalize_path(&format!("/{raw}"), &PathRules::default());
        if let Ok(h) = normalize_host(&host) {
            // A normalized host is a fixed point and never keeps a port or a trailing dot.
            prop_assert_eq!(normalize_host(&h), Ok(h.clone()));
            prop_assert!(!h.ends_with('.'));
        }
    }
}
