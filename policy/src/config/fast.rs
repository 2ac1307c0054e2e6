//! The fast path of [`super::parse`]: the text read by a reader of a strict subset of YAML
//! (`fast/subset.rs`) into a tree of slices of the text, and each object typed from it.
//! libyaml's scanner and parser, and serde_yaml_ng's events, took two thirds of the parse.
//!
//! It is held to the general path ([`super::parse_general`]): it returns a configuration
//! only where that path returns the same one, and gives up (`None`) at anything it is not
//! sure of, leaving the general path to accept the text or to say where the problem is:
//! - a text outside the subset (see `fast/subset.rs`);
//! - any error, YAML or a rule of the spec;
//! - a document that is not one object: a sequence of objects, a `List`;
//! - a kind it does not read (skipped with a notice by the general path);
//! - a scalar that YAML reads as a number, a boolean or null where a string is due, and
//!   a null anywhere but a peering's side or a NAT mode;
//! - a key written twice anywhere (the general path's tree refuses it).
//!
//! A property test (`tests::never_reads_otherwise_than_the_general_path`) edits the fixtures'
//! configurations at random, line by line and with YAML's syntax, and holds the two paths to
//! this on every edit.
//!
//! The values the general path keeps as YAML trees (`vni`, `ports`, `nat`) are typed here as
//! serde_yaml_ng types them ([`subset::resolve`]), so that both read them alike.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::{
    AsSpec, BlockSpec, Config, Ctx, IpSpec, Named, PeeringSpec, SideSpec, SubnetSpec, VpcSpec,
    check_default_blocks, validate_peerings, validate_vpcs,
};

mod subset;

use subset::{Node, Tree};

/// The configuration in `text`, or `None` where the general path must decide.
pub(super) fn parse(text: &str, _file: Option<&str>) -> Option<Config> {
    let (tree, documents) = subset::documents(text)?;
    let (mut vpcs, mut peerings) = (Vec::new(), Vec::new());
    for node in documents.into_iter().flatten() {
        // An error is never reported from here: the context stays empty.
        let ctx = Ctx {
            file: None,
            document: None,
            object: None,
        };
        match object(&tree, node)? {
            (name, Spec::Vpc(spec)) => vpcs.push(Named { name, spec, ctx }),
            (name, Spec::Peering(spec)) => peerings.push(Named { name, spec, ctx }),
        }
    }
    drop(tree);
    let vpcs = validate_vpcs(vpcs.into_iter().map(Ok)).ok()?;
    let (peerings, contexts) = validate_peerings(peerings.into_iter().map(Ok), &vpcs).ok()?;
    check_default_blocks(&vpcs, &peerings, &contexts).ok()?;
    Some(Config {
        vpcs: vpcs.into_iter().map(|(v, _)| v).collect(),
        peerings,
        notices: Vec::new(),
    })
}

enum Spec<'a> {
    Vpc(VpcSpec),
    Peering(PeeringSpec<'a>),
}

/// An object of a kind this path reads: its name and its spec.
fn object<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<(String, Spec<'a>)> {
    let (mut kind, mut name, mut spec) = (None, None, None);
    for &(key, value) in t.map(node)? {
        match key {
            "apiVersion" | "status" => {}
            "kind" => kind = Some(text(value)?),
            "metadata" => name = Some(metadata_name(t, value)?),
            "spec" => spec = Some(value),
            _ => return None,
        }
    }
    let (name, spec) = (name?, spec?);
    let spec = match kind? {
        "VPCInfo" => Spec::Vpc(vpc_spec(t, spec)?),
        "Peering" | "GatewayPeering" => Spec::Peering(peering_spec(t, spec)?),
        _ => return None,
    };
    Some((name.to_owned(), spec))
}

/// `metadata.name`, a non-empty string; the rest of `metadata` is not read.
fn metadata_name<'a>(t: &Tree<'a>, metadata: Node<'a>) -> Option<&'a str> {
    let &(_, name) = t.map(metadata)?.iter().find(|(k, _)| *k == "name")?;
    text(name).filter(|n| !n.is_empty())
}

/// A scalar YAML reads as a string.
fn text(node: Node<'_>) -> Option<&str> {
    match node {
        Node::Quoted(s) => Some(s),
        Node::Plain(s) if subset::is_string(s) => Some(s),
        _ => None,
    }
}

fn owned(node: Node<'_>) -> Option<String> {
    text(node).map(str::to_owned)
}

fn borrowed(node: Node<'_>) -> Option<Cow<'_, str>> {
    text(node).map(Cow::Borrowed)
}

/// The entries of a mapping, each of them with a key of `names`.
fn fields<'t, 'a>(
    t: &'t Tree<'a>,
    node: Node<'a>,
    names: &'static [&'static str],
) -> Option<&'t [(&'a str, Node<'a>)]> {
    let fields = t.map(node)?;
    fields
        .iter()
        .all(|(k, _)| names.contains(k))
        .then_some(fields)
}

/// A YAML tree as serde_yaml_ng builds it, for the values the general path keeps as trees.
fn value<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<Value> {
    Some(match node {
        Node::Empty => Value::Null,
        Node::Plain(s) => subset::resolve(s)?,
        Node::Quoted(s) => Value::String(s.to_owned()),
        Node::Map(_) => {
            let fields = t.map(node)?;
            let mut map = Mapping::with_capacity(fields.len());
            for &(k, v) in fields {
                map.insert(Value::String(k.to_owned()), value(t, v)?);
            }
            Value::Mapping(map)
        }
        Node::Seq(_) => Value::Sequence(
            t.seq(node)?
                .iter()
                .map(|&v| value(t, v))
                .collect::<Option<_>>()?,
        ),
    })
}

/// A number or a string: what `vni` and `ports` are read from.
fn scalar(t: &Tree<'_>, node: Node<'_>) -> Option<Value> {
    match node {
        Node::Plain(_) | Node::Quoted(_) => match value(t, node)? {
            v @ (Value::Number(_) | Value::String(_)) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

fn vpc_spec<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<VpcSpec> {
    let mut spec = VpcSpec {
        vni: None,
        subnets: None,
    };
    for &(key, value) in fields(t, node, &["vni", "subnets"])? {
        match key {
            "vni" => spec.vni = Some(scalar(t, value)?),
            _ => {
                let mut subnets = BTreeMap::new();
                for &(name, subnet) in t.map(value)? {
                    let &[(_, cidr)] = fields(t, subnet, &["cidr"])? else {
                        return None;
                    };
                    subnets.insert(name.to_owned(), SubnetSpec { cidr: owned(cidr)? });
                }
                spec.subnets = Some(subnets);
            }
        }
    }
    Some(spec)
}

fn peering_spec<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<PeeringSpec<'a>> {
    let mut spec = PeeringSpec {
        peering: None,
        gateway_group: None,
    };
    for &(key, value) in fields(t, node, &["peering", "gatewayGroup"])? {
        match key {
            "gatewayGroup" => spec.gateway_group = Some(owned(value)?),
            _ => {
                let mut peering = BTreeMap::new();
                for &(vpc, side) in t.map(value)? {
                    let side = match side {
                        Node::Empty => None,
                        side => Some(side_spec(t, side)?),
                    };
                    peering.insert(Cow::Borrowed(vpc), side);
                }
                spec.peering = Some(peering);
            }
        }
    }
    Some(spec)
}

fn side_spec<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<SideSpec<'a>> {
    let mut side = SideSpec { expose: None };
    for &(_, expose) in fields(t, node, &["expose"])? {
        let blocks = t.seq(expose)?.iter().map(|&b| block_spec(t, b));
        side.expose = Some(blocks.collect::<Option<_>>()?);
    }
    Some(side)
}

fn block_spec<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<BlockSpec<'a>> {
    let mut block = BlockSpec {
        ips: None,
        as_: None,
        nat: None,
        default: false,
    };
    for &(key, value) in fields(t, node, &["ips", "as", "nat", "default"])? {
        match key {
            "ips" => {
                let ips = t.seq(value)?.iter().map(|&ip| ip_spec(t, ip));
                block.ips = Some(ips.collect::<Option<_>>()?);
            }
            "as" => {
                let entries = t.seq(value)?.iter().map(|&a| as_spec(t, a));
                block.as_ = Some(entries.collect::<Option<_>>()?);
            }
            "nat" if value != Node::Empty => block.nat = Some(self::value(t, value)?),
            "default" => match value {
                Node::Plain(s) => match subset::resolve(s)? {
                    Value::Bool(b) => block.default = b,
                    _ => return None,
                },
                _ => return None,
            },
            _ => return None,
        }
    }
    Some(block)
}

fn ip_spec<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<IpSpec<'a>> {
    let mut ip = IpSpec {
        cidr: None,
        not: None,
        vpc_subnet: None,
        ports: None,
    };
    for &(key, value) in fields(t, node, &["cidr", "not", "vpcSubnet", "ports"])? {
        match key {
            "cidr" => ip.cidr = Some(borrowed(value)?),
            "not" => ip.not = Some(borrowed(value)?),
            "vpcSubnet" => ip.vpc_subnet = Some(borrowed(value)?),
            _ => ip.ports = Some(scalar(t, value)?),
        }
    }
    Some(ip)
}

fn as_spec<'a>(t: &Tree<'a>, node: Node<'a>) -> Option<AsSpec<'a>> {
    let mut entry = AsSpec {
        cidr: None,
        not: None,
        ports: None,
    };
    for &(key, value) in fields(t, node, &["cidr", "not", "ports"])? {
        match key {
            "cidr" => entry.cidr = Some(borrowed(value)?),
            "not" => entry.not = Some(borrowed(value)?),
            _ => entry.ports = Some(scalar(t, value)?),
        }
    }
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_any, parse_general};
    use super::*;

    /// Two VPCs and a peering, each a document; `{name}`, `{subnet}`, `{peer}`, `{group}`,
    /// `{default}` and `{extra}` are where the cases below write something else.
    const BASE: &str = "\
kind: VPCInfo
metadata: {name: {name}}
spec: {vni: 10, subnets: {{subnet}: {cidr: 10.1.0.0/16}}}
---
kind: VPCInfo
metadata: {name: b}
spec: {vni: 20}
---
kind: Peering
metadata: {name: a--b}
{extra}spec:
  peering:
    {peer}:
      expose:
        - ips: [{vpcSubnet: s1}]
    b:
      expose:
        - ips: [{cidr: 20.0.0.0/16, ports: 80-90}]
          default: {default}
  gatewayGroup: {group}
";

    fn base(changes: &[(&str, &str)]) -> String {
        let mut text = BASE.to_owned();
        for (slot, value) in changes {
            text = text.replace(slot, value);
        }
        let defaults = [
            ("{name}", "a"),
            ("{subnet}", "s1"),
            ("{peer}", "a"),
            ("{group}", "g1"),
            ("{default}", "false"),
            ("{extra}", ""),
        ];
        for (slot, value) in defaults {
            text = text.replace(slot, value);
        }
        text
    }

    #[test]
    fn reads_what_the_general_path_reads() {
        let mut texts = vec![
            base(&[]),
            format!("---\n{}\n---\n", base(&[("{default}", "true")])),
            base(&[
                ("{group}", "'7'"),
                ("{name}", "'a'"),
                ("{extra}", "apiVersion: v1\n"),
            ]),
        ];
        #[cfg(feature = "synth")]
        {
            use crate::synth::{Gateway, GatewayShape, Scale, config_yaml};
            for ports in [true, false] {
                let shape = GatewayShape::with_peerings(300, ports, 7);
                texts.push(Gateway::new(shape).yaml().to_owned());
            }
            texts.push(
                Gateway::new(GatewayShape::dual(300, true, 7))
                    .yaml()
                    .to_owned(),
            );
            texts.push(config_yaml(Scale::with_peerings(100, 3)));
        }
        texts.extend(SEEDS.iter().map(|s| (*s).to_owned()));
        // What the subset reads beside the usual: quoted keys, comments between lines,
        // blank lines, trailing spaces, block and flow styles mixed, nulls where they are
        // allowed, plain scalars YAML reads as strings.
        texts.extend([
            base(&[("{peer}", "'a'"), ("{extra}", "# a comment\n\n  # another\n")]),
            base(&[("{name}", "\"a\""), ("{group}", "g1   ")]),
            base(&[("{group}", "'g 1 # not a comment'")]),
            base(&[("{group}", "a:b::c/d,e")]),
            base(&[("{extra}", "apiVersion: [v1, {a: b}]\nstatus:\n"), ("{name}", "a, labels: {}")]),
            base(&[("{subnet}", "s1: {cidr: 10.2.0.0/16}, s2")]).replace("vpcSubnet: s1", "vpcSubnet: s2"),
            base(&[("{default}", "True")]),
            base(&[("10.1.0.0/16", "'10.1.0.0/16'")]),
            base(&[("80-90", "'80'")]),
            base(&[("80-90", "8080")]),
            base(&[("80-90", "0x50")]),
            base(&[("ports: 80-90", "ports: 0o120")]),
            base(&[]).replace("        - ips:", "        -   ips:").replace("          default", "            default"),
            "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 1}\n---\nkind: VPCInfo\nmetadata: {name: b}\nspec: {vni: 2}\n---\nkind: Peering\nmetadata: {name: p}\nspec:\n  peering:\n    a:\n    b:\n      expose:\n        - ips: [{cidr: 10.0.0.0/8}]\n        - {ips: [{cidr: 11.0.0.0/8}], nat: {masquerade: {idleTimeout: 5m}}}\n".to_owned(),
        ]);
        for text in &texts {
            let general = parse_general(text, Some("c.yaml")).expect("a valid configuration");
            let fast = parse(text, Some("c.yaml")).expect("the fast path reads it");
            assert_eq!(fast, general, "{text}");
        }
    }

    #[test]
    fn gives_up_where_it_could_read_otherwise() {
        let dup_peer = "a:\n      expose: [{ips: [{cidr: 10.1.0.0/16}]}]\n    a";
        let cases = [
            // Scalars YAML reads as other types where a string is due.
            ("{name}", "1"),
            ("{subnet}", "1"),
            ("{group}", "7"),
            ("{group}", "true"),
            ("{default}", "'true'"),
            ("{default}", "~"),
            // Keys written twice, in what is read and in what is ignored.
            ("{peer}", dup_peer),
            ("{extra}", "metadata: {name: x}\n"),
            ("{extra}", "status: {a: 1, a: 2}\n"),
            ("{name}", "a, labels: {x: 1, x: 2}"),
            // A tag, which the general path reads through.
            ("{subnet}", "!tag s1"),
            // Not one object of a kind this path reads.
            ("{extra}", "items: []\n"),
        ];
        for (slot, value) in cases {
            let text = base(&[(slot, value)]);
            assert!(parse(&text, None).is_none(), "{slot} = {value}:\n{text}");
            assert_eq!(parse_any(&text, None), parse_general(&text, None));
        }
        // YAML outside the subset, read by the general path or refused by it.
        let long_key = format!("status: {{{}: 1}}\n", "k".repeat(1100));
        let outside = [
            base(&[("{group}", "\"g\\u0031\"")]),
            base(&[("{group}", "'it''s'")]),
            base(&[("{group}", "|\n    g1")]),
            base(&[("{group}", ">-\n    g1")]),
            base(&[("{group}", "g1\n    more")]),
            base(&[("{group}", "g1\n  # a comment between\n    more")]),
            base(&[("{group}", "g1 # a comment")]),
            base(&[("{group}", "g 1")]),
            base(&[("{group}", "&anchor g1")]),
            base(&[("{group}", "\tg1")]),
            base(&[("{group}", "g1\t")]),
            base(&[("{group}", "\"g1")]),
            base(&[("{group}", "fd00::")]),
            base(&[("{group}", "[g1, ]")]),
            base(&[("{group}", "{g: 1,}")]),
            base(&[("{group}", "{g:1}")]),
            base(&[("{group}", "{g: }")]),
            base(&[("{group}", "[g: 1]")]),
            base(&[("{group}", "[g1,\n    g2]")]),
            base(&[("{group}", "g1: x")]),
            base(&[("{group}", "-g1")]),
            base(&[("{group}", ".5")]),
            base(&[("{extra}", "%YAML 1.2\n")]),
            base(&[("{extra}", "? kind2\n: x\n")]),
            base(&[("{extra}", "...\n")]),
            base(&[("{extra}", "<<: {status: 1}\n")]),
            base(&[("{extra}", &long_key)]),
            base(&[]).replace("gatewayGroup: ", "gatewayGroup : "),
            base(&[]).replace(
                "      expose:\n        - ips: [{vpcSubnet",
                "      expose:\n      - ips: [{vpcSubnet",
            ),
            base(&[]).replace(
                "        - ips: [{vpcSubnet",
                "        -\n          ips: [{vpcSubnet",
            ),
            base(&[]).replace(
                "        - ips: [{vpcSubnet: s1}]",
                "        - - ips: [{vpcSubnet: s1}]",
            ),
            base(&[]).replace("\n---\n", "\n--- \n"),
            base(&[]).replace("\n---\n", "\n--- # c\n"),
            base(&[]).replace("\n---\n", "\n----\n"),
            base(&[]).replace('\n', "\r\n"),
            format!("\u{feff}{}", base(&[])),
            base(&[("{group}", "\"g\u{e9}\"")]),
        ];
        for text in &outside {
            assert!(parse(text, None).is_none(), "{text}");
            assert_eq!(parse_any(text, None), parse_general(text, None), "{text}");
        }
        // The fields of an object in any order.
        let reordered = format!(
            "metadata: {{name: c}}\nspec: {{vni: 30}}\nkind: VPCInfo\n---\n{}",
            base(&[])
        );
        let general = parse_general(&reordered, None);
        assert!(general.is_ok(), "{general:?}");
        assert_eq!(parse(&reordered, None), general.ok());
        let unusual = [
            format!(
                "kind: Other\nmetadata: {{name: o}}\nspec: {{}}\n---\n{}",
                base(&[])
            ),
            format!(
                "- kind: VPCInfo\n  metadata: {{name: c}}\n  spec: {{vni: 30}}\n---\n{}",
                base(&[])
            ),
            format!(
                "kind: VPCInfoList\nitems: [{{kind: VPCInfo, metadata: {{name: c}}, spec: {{vni: 30}}}}]\n---\n{}",
                base(&[])
            ),
        ];
        for text in &unusual {
            assert!(parse(text, None).is_none(), "{text}");
            let general = parse_general(text, None);
            assert!(general.is_ok(), "{general:?}");
            assert_eq!(parse_any(text, None), general);
        }
    }

    /// Configurations the mutations below start from: the fixtures' cases, which between
    /// them write every field the fast path reads, in block and flow style.
    const SEEDS: [&str; 6] = [
        include_str!("../../../fixtures/cases/spec-3.2-nat/config.yaml"),
        include_str!("../../../fixtures/cases/spec-3.2-ports/config.yaml"),
        include_str!("../../../fixtures/cases/spec-3.3-default/config.yaml"),
        include_str!("../../../fixtures/cases/not-and-subnets/config.yaml"),
        include_str!("../../../fixtures/cases/ipv6-default-and-not/config.yaml"),
        include_str!("../../../fixtures/cases/spec-3.1-overlap/config.yaml"),
    ];

    /// A configuration written in block style only, every scalar on a line of its own: names,
    /// VNIs, prefixes, `not`s, ports, subnets, `default` and the group are each a line an
    /// edit replaces whole.
    const BLOCK_SEED: &str = "\
kind: VPCInfo
metadata:
  name: a
spec:
  vni: 10
  subnets:
    front:
      cidr: 10.1.0.0/16
---
kind: VPCInfo
metadata:
  name: b
spec:
  vni: 20
---
kind: VPCInfo
metadata:
  name: c
spec:
  vni: 30
---
kind: Peering
metadata:
  name: a--b
spec:
  gatewayGroup: g1
  peering:
    a:
      expose:
        - ips:
            - vpcSubnet: front
            - not: 10.1.1.0/24
        - ips:
            - cidr: 10.2.0.0/16
              ports: 80-90
    b:
      expose:
        - ips:
            - cidr: fd00:b::/64
            - cidr: 20.0.0.0/16
---
kind: Peering
metadata:
  name: a--c
spec:
  peering:
    a:
      expose:
        - ips:
            - cidr: 10.3.0.0/16
    c:
      expose:
        - default: true
";

    /// [`SEEDS`], [`BLOCK_SEED`], and a configuration of the gateway's shape as the generator
    /// writes it.
    fn seeds() -> &'static [String] {
        static SEED_TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        SEED_TEXTS.get_or_init(|| {
            #[allow(unused_mut)]
            let mut seeds: Vec<String> = SEEDS.iter().map(|s| (*s).to_owned()).collect();
            seeds.push(BLOCK_SEED.to_owned());
            #[cfg(feature = "synth")]
            {
                use crate::synth::{Gateway, GatewayShape};
                let shape = GatewayShape::with_peerings(8, true, 5);
                seeds.push(Gateway::new(shape).yaml().to_owned());
            }
            seeds
        })
    }

    /// What a mutation may write in place of a value: YAML's other types, tags, anchors,
    /// empty and repeated keys, and values of the spec's fields in the wrong place.
    const VALUES: [&str; 64] = [
        "1",
        "07",
        "0x1F",
        "1e3",
        "-1",
        "4294967296",
        ".nan",
        "true",
        "yes",
        "~",
        "null",
        "''",
        "'10'",
        "\"X\"",
        "!tag X",
        "!!str 5",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1, a: 2}",
        "&a X",
        "*a",
        "10.0.0.0/8",
        "80-90",
        "22,443",
        "fd00::/64",
        "X",
        "Y",
        "front",
        "{vpcSubnet: front}",
        // YAML's syntax, inside and outside the subset.
        "'a''b'",
        "\"a\\\"b\"",
        "\"a\\tb\"",
        "'#'",
        "a # c",
        "a#b",
        "a b",
        "\ta",
        "|",
        ">",
        "|\n  x",
        "{a:b}",
        "{a: 1,}",
        "[a, ]",
        "[a: b]",
        "{a: }",
        "[{cidr: 10.0.0.0/8}, ]",
        "? a",
        "a:",
        "a::b",
        "a: b: c",
        "fd00::",
        "- a",
        "- - a",
        "-",
        "---",
        "...",
        "\"\"",
        "'unclosed",
        "True",
        "0o17",
        ".inf",
        "a,b",
        "[a, [b, {c: d}]]",
    ];

    /// Lines a mutation may insert: document markers, comments, directives, complex keys,
    /// indentation that is not a multiple of two, merge keys.
    const LINES: [&str; 16] = [
        "---",
        "--- x",
        "...",
        "# a comment",
        "",
        "   ",
        "\t",
        "%YAML 1.2",
        "? a",
        ": b",
        "- x",
        "x",
        "   x: 1",
        " - {cidr: 10.0.0.0/8}",
        "<<: {a: 1}",
        "status: {}",
    ];

    /// What a mutation may write at the end of a line.
    const ENDS: [&str; 10] = [" # c", "  ", ":", " x", "\t", ",", "\r", "'", "}", " &a"];

    /// One edit of a line of a configuration.
    #[derive(Debug, Clone)]
    enum Edit {
        /// A value of the line replaced: the `n`-th place a scalar starts (after `: `, `- `,
        /// `, `, `[` or `{`), up to the end of that scalar in a flow collection (`,`, `]` or
        /// `}`), or of the line.
        Value(usize, usize, usize),
        /// The line written twice: keys repeated, list items added.
        Repeat(usize),
        /// The line removed.
        Remove(usize),
        /// The line swapped with the next: `kind` after `spec`, keys moved between maps.
        Swap(usize),
        /// The line moved two columns right or left.
        Indent(usize, bool),
        /// A line of [`LINES`] inserted.
        Insert(usize, usize),
        /// An end of [`ENDS`] written after the line.
        Append(usize, usize),
        /// The line moved one column right.
        Nudge(usize),
    }

    fn apply(text: &str, edits: &[Edit]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for edit in edits {
            if lines.is_empty() {
                break;
            }
            let at = |i: usize| i % lines.len();
            match *edit {
                Edit::Value(i, n, v) => {
                    let i = at(i);
                    let line = &lines[i];
                    let starts: Vec<usize> = [": ", "- ", ", ", "[", "{"]
                        .iter()
                        .flat_map(|m| line.match_indices(m).map(|(c, m)| c + m.len()))
                        .collect();
                    if let Some(&cut) = starts.get(n % starts.len().max(1)) {
                        let end = line[cut..]
                            .find([',', ']', '}'])
                            .map_or(line.len(), |e| cut + e);
                        let value = VALUES[v % VALUES.len()];
                        lines[i] = format!("{}{value}{}", &line[..cut], &line[end..]);
                    }
                }
                Edit::Repeat(i) => {
                    let line = lines[at(i)].clone();
                    lines.insert(at(i), line);
                }
                Edit::Remove(i) => {
                    lines.remove(at(i));
                }
                Edit::Swap(i) => {
                    let (i, j) = (at(i), at(i + 1));
                    lines.swap(i, j);
                }
                Edit::Insert(i, l) => {
                    lines.insert(at(i), LINES[l % LINES.len()].to_owned());
                }
                Edit::Append(i, e) => {
                    let i = at(i);
                    lines[i].push_str(ENDS[e % ENDS.len()]);
                }
                Edit::Nudge(i) => {
                    let i = at(i);
                    lines[i].insert(0, ' ');
                }
                Edit::Indent(i, right) => {
                    let i = at(i);
                    lines[i] = if right {
                        format!("  {}", lines[i])
                    } else {
                        lines[i].strip_prefix("  ").unwrap_or(&lines[i]).to_owned()
                    };
                }
            }
        }
        lines.join("\n")
    }

    fn edit() -> impl proptest::strategy::Strategy<Value = Edit> {
        use proptest::prelude::*;
        let line = 0..200usize;
        prop_oneof![
            4 => (line.clone(), 0..8usize, 0..VALUES.len()).prop_map(|(i, n, v)| Edit::Value(i, n, v)),
            1 => line.clone().prop_map(Edit::Repeat),
            1 => line.clone().prop_map(Edit::Remove),
            1 => line.clone().prop_map(Edit::Swap),
            1 => (line.clone(), any::<bool>()).prop_map(|(i, r)| Edit::Indent(i, r)),
            1 => (line.clone(), 0..LINES.len()).prop_map(|(i, l)| Edit::Insert(i, l)),
            1 => (line.clone(), 0..ENDS.len()).prop_map(|(i, e)| Edit::Append(i, e)),
            1 => line.prop_map(Edit::Nudge),
        ]
    }

    /// Every value of every seed replaced by each of [`VALUES`], one edit at a time: the fast
    /// path gives up or reads what the general path reads. Where the random edits below may
    /// miss a scalar YAML types otherwise, this sweep reaches each one.
    #[test]
    fn every_value_replaced_reads_as_the_general_path() {
        let mut read = 0;
        for seed in seeds() {
            for (i, line) in seed.lines().enumerate() {
                let places = [": ", "- ", ", ", "[", "{"]
                    .iter()
                    .map(|m| line.matches(m).count())
                    .sum::<usize>();
                for n in 0..places {
                    for v in 0..VALUES.len() {
                        let text = apply(seed, &[Edit::Value(i, n, v)]);
                        if let Some(fast) = parse(&text, Some("c.yaml")) {
                            read += 1;
                            assert_eq!(Ok(fast), parse_general(&text, Some("c.yaml")), "{text}");
                        }
                    }
                }
            }
        }
        assert!(
            read > 100,
            "the fast path read only {read} of the edited texts"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8192))]

        /// On any edit of a valid configuration, the fast path either gives up or returns
        /// exactly what the general path returns, and `parse` answers as the general path.
        #[test]
        fn never_reads_otherwise_than_the_general_path(
            seed in 0..SEEDS.len() + 2,
            edits in proptest::collection::vec(edit(), 1..4),
        ) {
            let seeds = seeds();
            let text = apply(&seeds[seed % seeds.len()], &edits);
            let general = parse_general(&text, Some("c.yaml"));
            if let Some(fast) = parse(&text, Some("c.yaml")) {
                proptest::prop_assert_eq!(Ok(fast), general.clone(), "{}", text);
            }
            proptest::prop_assert_eq!(parse_any(&text, Some("c.yaml")), general, "{}", text);
        }
    }
}
