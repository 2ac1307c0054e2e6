//! One test per rule of SPEC section 4: the configuration is refused, and the error names the
//! file, the object, the field and the offending value. Plus what must be accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use flowgate_policy::{ConfigError, Table, parse};

const FILE: &str = "gateway.yaml";

fn vpc(name: &str, vni: u32) -> String {
    format!(
        "apiVersion: gateway.githedgehog.com/v1alpha1\nkind: VPCInfo\nmetadata: {{name: {name}}}\nspec:\n  vni: {vni}\n  subnets:\n    web: {{cidr: 10.{vni}.1.0/24}}\n---\n"
    )
}

/// Two VPCs `a` (VNI 1) and `b` (VNI 2), and a peering between them with the given sides.
fn with_peering(a_expose: &str, b_expose: &str) -> String {
    vpc("a", 1)
        + &vpc("b", 2)
        + &format!(
            "kind: Peering\nmetadata: {{name: a--b}}\nspec:\n  peering:\n    a:\n      expose: {a_expose}\n    b:\n      expose: {b_expose}\n"
        )
}

fn refuse(yaml: &str) -> ConfigError {
    match parse(yaml, Some(FILE)) {
        Ok(_) => panic!("accepted a config that breaks a rule:\n{yaml}"),
        Err(e) => {
            assert_eq!(e.file.as_deref(), Some(FILE), "{e}");
            e
        }
    }
}

/// The error names `field` and `value`, says `words`, and its text shows all of them.
fn assert_names(e: &ConfigError, object: &str, field: &str, value: Option<&str>, words: &str) {
    assert_eq!(e.object.as_deref(), Some(object), "object of: {e}");
    assert_eq!(e.field.as_deref(), Some(field), "field of: {e}");
    assert_eq!(e.value.as_deref(), value, "value of: {e}");
    assert!(
        e.message.contains(words),
        "message of {e} should say `{words}`"
    );
    let text = e.to_string();
    for part in [FILE, object, field].into_iter().chain(value) {
        assert!(text.contains(part), "`{text}` should name `{part}`");
    }
}

const B_OK: &str = "[{ips: [{cidr: 20.0.0.0/16}]}]";

#[test]
fn unparsable_yaml() {
    let e = refuse("kind: VPCInfo\nmetadata: {name: a\nspec: [");
    assert!(e.message.contains("not valid YAML at line"), "{e}");
    assert_eq!(e.document, Some(1));
}

#[test]
fn unknown_field_in_a_known_kind() {
    let e = refuse(&with_peering(
        "[{ips: [{cidr: 10.0.0.0/24, prots: 80}]}]",
        B_OK,
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips[0].prots",
        Some("prots"),
        "unknown field",
    );
    let e = refuse("kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 5, color: blue}\n");
    assert_names(
        &e,
        "VPCInfo `a`",
        "spec.color",
        Some("color"),
        "unknown field",
    );
}

#[test]
fn missing_metadata_name() {
    let e = refuse("kind: VPCInfo\nmetadata: {}\nspec: {vni: 5}\n");
    assert_names(&e, "VPCInfo", "metadata.name", None, "missing");
}

#[test]
fn vni_zero_or_too_large() {
    let e = refuse(&vpc("a", 0));
    assert_names(&e, "VPCInfo `a`", "spec.vni", Some("0"), "1 to 16777215");
    let e = refuse(&vpc("a", 16_777_216));
    assert_names(
        &e,
        "VPCInfo `a`",
        "spec.vni",
        Some("16777216"),
        "1 to 16777215",
    );
    let e = refuse("kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: -3}\n");
    assert_names(&e, "VPCInfo `a`", "spec.vni", Some("-3"), "1 to 16777215");
    // The largest VNI is fine.
    parse(
        "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 16777215}\n",
        None,
    )
    .unwrap();
}

#[test]
fn two_vpcs_with_one_name_or_one_vni() {
    let e = refuse(&(vpc("a", 1) + &vpc("a", 2)));
    assert_names(
        &e,
        "VPCInfo `a`",
        "metadata.name",
        Some("a"),
        "two VPCs are named",
    );
    let e = refuse(&(vpc("a", 7) + &vpc("b", 7)));
    assert_names(
        &e,
        "VPCInfo `b`",
        "spec.vni",
        Some("7"),
        "already the VNI of VPC `a`",
    );
}

#[test]
fn peering_without_exactly_two_distinct_vpcs() {
    let one =
        vpc("a", 1) + "kind: Peering\nmetadata: {name: solo}\nspec: {peering: {a: {expose: []}}}\n";
    assert_names(
        &refuse(&one),
        "Peering `solo`",
        "spec.peering",
        Some("[a]"),
        "exactly two distinct VPCs",
    );
    let three = vpc("a", 1)
        + &vpc("b", 2)
        + &vpc("c", 3)
        + "kind: Peering\nmetadata: {name: trio}\nspec: {peering: {a: {}, b: {}, c: {}}}\n";
    assert_names(
        &refuse(&three),
        "Peering `trio`",
        "spec.peering",
        Some("[a, b, c]"),
        "exactly two distinct VPCs",
    );
}

#[test]
fn peering_names_a_vpc_without_vpcinfo() {
    let yaml = vpc("a", 1)
        + "kind: Peering\nmetadata: {name: a--ghost}\nspec: {peering: {a: {}, ghost: {}}}\n";
    assert_names(
        &refuse(&yaml),
        "Peering `a--ghost`",
        "spec.peering.ghost",
        Some("ghost"),
        "no VPCInfo",
    );
}

#[test]
fn two_peerings_between_the_same_vpcs() {
    let yaml = with_peering(B_OK, B_OK)
        + "---\nkind: Peering\nmetadata: {name: again}\nspec: {peering: {b: {}, a: {}}}\n";
    assert_names(
        &refuse(&yaml),
        "Peering `again`",
        "spec.peering",
        Some("[a, b]"),
        "already peered by `a--b`",
    );
}

#[test]
fn two_peerings_of_one_name() {
    // The second `b--c` is the one refused, though a later peering breaks another rule.
    let yaml = vpc("a", 1)
        + &vpc("b", 2)
        + &vpc("c", 3)
        + "kind: Peering\nmetadata: {name: a--b}\nspec: {peering: {a: {}, b: {}}}\n---\n"
        + "kind: Peering\nmetadata: {name: b--c}\nspec: {peering: {b: {}, c: {}}}\n---\n"
        + "kind: Peering\nmetadata: {name: b--c}\nspec: {peering: {a: {}, c: {}}}\n---\n"
        + "kind: Peering\nmetadata: {name: a--c}\nspec: {peering: {a: {}, c: {}}}\n";
    let e = refuse(&yaml);
    assert_names(
        &e,
        "Peering `b--c`",
        "metadata.name",
        Some("b--c"),
        "two peerings are named `b--c`",
    );
    assert_eq!(e.document, Some(6), "{e}");
}

#[test]
fn prefix_that_does_not_parse_or_has_host_bits() {
    let e = refuse(&with_peering("[{ips: [{cidr: 10.0.0.300/24}]}]", B_OK));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips[0].cidr",
        Some("10.0.0.300/24"),
        "not an IP prefix",
    );
    let e = refuse(&with_peering("[{ips: [{cidr: 10.0.0.1/24}]}]", B_OK));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips[0].cidr",
        Some("10.0.0.1/24"),
        "did you mean 10.0.0.0/24?",
    );
    let e = refuse(&with_peering(
        B_OK,
        "[{ips: [{cidr: 20.0.0.0/16}], as: [{cidr: 'fd00::1/64'}]}]",
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.b.expose[0].as[0].cidr",
        Some("fd00::1/64"),
        "did you mean fd00::/64?",
    );
    let e = refuse(&(vpc("a", 1).replace("10.1.1.0/24", "10.1.1.0/33")));
    assert_names(
        &e,
        "VPCInfo `a`",
        "spec.subnets.web.cidr",
        Some("10.1.1.0/33"),
        "not an IP prefix",
    );
}

#[test]
fn ports_that_do_not_parse_are_too_large_or_reversed() {
    let cases = [
        ("http", "not a port number"),
        ("80-70000", "above 65535"),
        ("90-80", "low end above its high end"),
    ];
    for (ports, words) in cases {
        let e = refuse(&with_peering(
            &format!("[{{ips: [{{cidr: 10.0.0.0/24, ports: '{ports}'}}]}}]"),
            B_OK,
        ));
        assert_names(
            &e,
            "Peering `a--b`",
            "spec.peering.a.expose[0].ips[0].ports",
            Some(ports),
            words,
        );
    }
    let e = refuse(&with_peering(
        B_OK,
        "[{ips: [{cidr: 20.0.0.0/16}], as: [{cidr: 9.0.0.0/16, ports: 65536}]}]",
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.b.expose[0].as[0].ports",
        Some("65536"),
        "above 65535",
    );
}

#[test]
fn not_outside_every_cidr() {
    let e = refuse(&with_peering(
        "[{ips: [{cidr: 10.0.0.0/24}, {not: 10.0.1.0/28}]}]",
        B_OK,
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips[1].not",
        Some("10.0.1.0/28"),
        "outside every `cidr`",
    );
    let e = refuse(&with_peering(
        B_OK,
        "[{ips: [{cidr: 20.0.0.0/16}], as: [{cidr: 9.0.0.0/24}, {not: 9.9.0.0/24}]}]",
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.b.expose[0].as[1].not",
        Some("9.9.0.0/24"),
        "outside every `cidr`",
    );
}

#[test]
fn not_that_leaves_no_address() {
    let e = refuse(&with_peering(
        "[{ips: [{cidr: 10.0.0.0/25}, {cidr: 10.0.0.128/25}, {not: 10.0.0.0/24}]}]",
        B_OK,
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips",
        Some("not: [10.0.0.0/24]"),
        "no address",
    );
}

#[test]
fn block_mixing_ipv4_and_ipv6() {
    let e = refuse(&with_peering(
        "[{ips: [{cidr: 10.0.0.0/24}, {cidr: 'fd00::/64'}]}]",
        B_OK,
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips[1].cidr",
        Some("fd00::/64"),
        "mixes IPv4 and IPv6",
    );
    let e = refuse(&with_peering(
        B_OK,
        "[{ips: [{cidr: 20.0.0.0/16}], as: [{cidr: 'fd00::/112'}]}]",
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.b.expose[0].as[0].cidr",
        Some("fd00::/112"),
        "mixes IPv4 and IPv6",
    );
}

#[test]
fn block_with_neither_ips_nor_default() {
    let e = refuse(&with_peering("[{as: [{cidr: 9.0.0.0/24}]}]", B_OK));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0]",
        None,
        "needs `ips` or `default: true`",
    );
    let e = refuse(&with_peering(
        B_OK,
        "[{ips: [{cidr: 20.0.0.0/16}]}, {default: false}]",
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.b.expose[1]",
        None,
        "needs `ips` or `default: true`",
    );
}

#[test]
fn static_blocks_with_overlapping_ips_or_as() {
    let ips = "[{ips: [{cidr: 10.0.0.0/24}], as: [{cidr: 9.0.0.0/24}], nat: {static: {}}},
               {ips: [{cidr: 10.0.0.128/25}], as: [{cidr: 9.0.1.0/25}], nat: {static: {}}}]";
    let e = refuse(&with_peering(ips, B_OK));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[1].ips",
        Some("10.0.0.128/25"),
        "overlaps the `ips` of `nat: static` block expose[0]",
    );
    let as_ = "[{ips: [{cidr: 10.0.0.0/24}], as: [{cidr: 9.0.0.0/24}], nat: {stateless: {}}},
               {ips: [{cidr: 10.0.1.0/24}], as: [{cidr: 9.0.0.0/24}], nat: {static: {}}}]";
    let e = refuse(&with_peering(as_, B_OK));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[1].as",
        Some("9.0.0.0/24"),
        "overlaps the `as` of `nat: static` block expose[0]",
    );
    // Other overlap within a peering is legal: a masquerade block and a port-forward block.
    let legal = "[{ips: [{cidr: 10.0.0.0/24}], as: [{cidr: 9.0.0.1/32}], nat: {masquerade: {}}},
                 {ips: [{cidr: 10.0.0.5/32}], as: [{cidr: 9.0.0.1/32}], nat: {portForward: {}}}]";
    parse(&with_peering(legal, B_OK), None).unwrap();
}

#[test]
fn static_ips_and_as_of_different_sizes() {
    let e = refuse(&with_peering(
        "[{ips: [{cidr: 10.0.0.0/24}], as: [{cidr: 9.0.0.0/25}], nat: {static: {}}}]",
        B_OK,
    ));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].as",
        Some("9.0.0.0/25 (128 addresses)"),
        "`ips` covers 256",
    );
    // Equal sizes written differently are fine, `not`s included.
    let ok = "[{ips: [{cidr: 10.0.0.0/24}, {not: 10.0.0.0/25}], as: [{cidr: 9.0.0.0/26}, {cidr: 9.0.1.0/26}], nat: {static: {}}}]";
    parse(&with_peering(ok, B_OK), None).unwrap();
}

#[test]
fn vpc_subnet_that_names_no_subnet() {
    let e = refuse(&with_peering("[{ips: [{vpcSubnet: db}]}]", B_OK));
    assert_names(
        &e,
        "Peering `a--b`",
        "spec.peering.a.expose[0].ips[0].vpcSubnet",
        Some("db"),
        "VPC `a` has no subnet",
    );
    // The named subnet of the right VPC is fine.
    parse(&with_peering("[{ips: [{vpcSubnet: web}]}]", B_OK), None).unwrap();
}

#[test]
fn two_default_blocks_facing_one_vpc() {
    let yaml = vpc("a", 1)
        + &vpc("b", 2)
        + &vpc("c", 3)
        + "kind: Peering\nmetadata: {name: a--b}\nspec: {peering: {a: {expose: [{ips: [{cidr: 10.0.0.0/24}]}]}, b: {expose: [{default: true}]}}}\n---\n"
        + "kind: Peering\nmetadata: {name: a--c}\nspec: {peering: {a: {expose: [{ips: [{cidr: 10.0.0.0/24}]}]}, c: {expose: [{default: true}]}}}\n";
    let e = refuse(&yaml);
    assert_names(
        &e,
        "Peering `a--c`",
        "spec.peering.c.expose[0].default",
        Some("true"),
        "a second default block facing VPC `a`",
    );
}

#[test]
fn accepts_every_spelling_the_spec_allows() {
    let yaml = vpc("vpc-1", 100)
        + &vpc("vpc-2", 200)
        + "kind: Something\nmetadata: {name: other}\nspec: {whatever: 1}\n---\n"
        + r#"{"apiVersion": "gateway.githedgehog.com/v1alpha1", "kind": "GatewayPeering",
            "metadata": {"name": "p", "namespace": "default", "labels": {"x": "y"}},
            "spec": {"gatewayGroup": "default", "peering": {
              "vpc-1": {"expose": [
                 {"ips": [{"cidr": "10.100.0.0/16"}, {"cidr": "10.3.0.0/24", "ports": 80},
                          {"vpcSubnet": "web", "ports": "22, 80-90"}, {"not": "10.100.1.128/25"}],
                  "as": [{"cidr": "192.168.0.0/15"}, {"not": "192.168.0.0/24"}], "nat": {"masquerade": {"idleTimeout": "2m"}}},
                 {"ips": [{"cidr": "10.9.0.0/24"}], "as": [{"cidr": "192.170.0.0/24"}], "nat": {"static": null}},
                 {"ips": [{"cidr": "10.8.0.0/24"}], "as": [{"cidr": "192.171.0.1/32", "ports": 443}], "nat": {"portForward": {"ports": [1]}}}]},
              "vpc-2": {"expose": [{"default": true}, {"ips": [{"cidr": "fd00::/64"}]}]}}},
            "status": {}}"#;
    let config = parse(&yaml, Some(FILE)).unwrap();
    assert_eq!(config.peerings.len(), 1);
    assert_eq!(config.notices.len(), 1);
    assert!(
        config.notices[0].contains("`Something`") && config.notices[0].contains(FILE),
        "{:?}",
        config.notices
    );
    assert_eq!(config.peerings[0].gateway_group.as_deref(), Some("default"));
    let side = &config.peerings[0].sides[0];
    assert_eq!(side.blocks.len(), 3);
    assert_eq!(side.blocks[0].ips.len(), 3);
    assert_eq!(side.blocks[0].ips[2].subnet.as_deref(), Some("web"));
    assert_eq!(side.blocks[0].ips[2].net.to_string(), "10.100.1.0/24");
    Table::build(&config).unwrap();
}

#[test]
fn accepts_lists_sequences_and_empty_documents() {
    let list = format!(
        "---\n---\napiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n",
        "{kind: VPCInfo, metadata: {name: a}, spec: {vni: 1}}",
        "{kind: VPCInfo, metadata: {name: b}, spec: {vni: 2}}"
    );
    assert_eq!(parse(&list, None).unwrap().vpcs.len(), 2);
    let seq = "- {kind: VPCInfo, metadata: {name: a}, spec: {vni: 1}}\n- {kind: VPCInfo, metadata: {name: b}, spec: {vni: 2}}\n";
    assert_eq!(parse(seq, None).unwrap().vpcs.len(), 2);
    assert_eq!(parse("", None).unwrap().vpcs.len(), 0);
}

#[test]
fn a_duplicate_key_names_its_object() {
    // The YAML parser finds it before any object exists; the refusal still names the object.
    let text = "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 1}\n---\nkind: VPCInfo\nmetadata: {name: b}\nspec: {vni: 2}\n---\nkind: Peering\nmetadata:\n  name: a--b\nspec:\n  peering:\n    a: {expose: [{ips: [{cidr: 10.0.0.0/24}]}]}\n    a: {expose: [{ips: [{cidr: 10.0.1.0/24}]}]}\n";
    let e = refuse(text);
    assert_eq!(e.object.as_deref(), Some("Peering `a--b`"), "{e}");
    assert!(e.message.contains("duplicate"), "{e}");
    assert_eq!(e.document, Some(3));
}

#[test]
fn nesting_and_alias_bombs_are_refused_before_parsing() {
    // Flow nesting makes the YAML parser quadratic: refused in a linear pass.
    let deep = format!("{}1{}", "{a: ".repeat(50_000), "}".repeat(50_000));
    let started = std::time::Instant::now();
    let e = refuse(&deep);
    assert!(e.message.contains("nested deeper than 64"), "{e}");
    assert_eq!(e.value.as_deref(), Some("line 1"));
    // Bounded, not timed: a linear pass over 250 KB is far from a second even unoptimised.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // Aliases that expand exponentially (a "billion laughs"): the parser's own repetition
    // limit catches a small one, our node budget one with a large anchor, which that limit
    // (a multiple of the document's events) lets through.
    let bomb = |anchor_items: usize| {
        let mut bomb = format!("l0: &l0 [{}]\n", vec!["x"; anchor_items].join(", "));
        for level in 1..6 {
            let list = vec![format!("*l{}", level - 1); 10].join(", ");
            bomb.push_str(&format!("l{level}: &l{level} [{list}]\n"));
        }
        bomb
    };
    let e = refuse(&bomb(10));
    assert!(e.message.contains("repetition limit"), "{e}");
    let e = refuse(&bomb(50_000));
    assert!(e.message.contains("aliases expand to more than"), "{e}");

    // A few honest aliases are fine.
    let ok = "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 1, subnets: &s {x: {cidr: 10.0.0.0/24}}}\n---\nkind: VPCInfo\nmetadata: {name: b}\nspec: {vni: 2}\n";
    assert_eq!(parse(ok, None).unwrap().vpcs.len(), 2);
}
