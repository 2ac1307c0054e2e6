//! The fast path of [`super::parse`]: each document typed straight from the YAML parser's
//! events, with no tree in between. Building the trees, typing the objects from them and
//! freeing them took as long as the YAML parser itself.
//!
//! It is held to the general path ([`super::parse_general`]): it returns a configuration
//! only where that path returns the same one, and gives up (`None`) at anything it is not
//! sure of, leaving the general path to accept the text or to say where the problem is:
//! - any error, YAML or a rule of the spec;
//! - a document that is not one object: a sequence of objects, a `List`;
//! - a kind it does not read (skipped with a notice by the general path), or `spec` before
//!   `kind`;
//! - a scalar that YAML reads as a number, a boolean or null where a string is due, or a
//!   tagged one (the general path's tree keeps their types);
//! - a key written twice anywhere (the general path's tree refuses it).
//!
//! A property test (`tests::never_reads_otherwise_than_the_general_path`) edits the fixtures'
//! configurations at random, line by line, and holds the two paths to this on every edit.
//!
//! The values the general path keeps as YAML trees (`vni`, `ports`, `nat`, `metadata`,
//! `apiVersion`, `status`) are read as trees here too, so that both read them alike.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_yaml_ng::Value;

use super::{
    AsSpec, BlockSpec, Config, Ctx, IpSpec, Named, PeeringSpec, SideSpec, SubnetSpec, VpcSpec,
    check_default_blocks, object_name, validate_peerings, validate_vpcs,
};

/// The configuration in `text`, or `None` where the general path must decide.
pub(super) fn parse(text: &str, file: Option<&str>) -> Option<Config> {
    let (mut vpcs, mut peerings) = (Vec::new(), Vec::new());
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let Some(object) = Option::<Object>::deserialize(document).ok()? else {
            continue;
        };
        let ctx = Ctx {
            file: file.map(str::to_owned),
            document: Some(i + 1),
            object: Some(format!("{} `{}`", object.kind, object.name)),
        };
        let name = object.name;
        match object.spec {
            Spec::Vpc(spec) => vpcs.push(Named {
                name,
                spec: spec.into(),
                ctx,
            }),
            Spec::Peering(spec) => peerings.push(Named {
                name,
                spec: spec.into(),
                ctx,
            }),
        }
    }
    let vpcs = validate_vpcs(vpcs.into_iter().map(Ok)).ok()?;
    let (peerings, contexts) = validate_peerings(peerings.into_iter().map(Ok), &vpcs).ok()?;
    check_default_blocks(&vpcs, &peerings, &contexts).ok()?;
    Some(Config {
        vpcs: vpcs.into_iter().map(|(v, _)| v).collect(),
        peerings,
        notices: Vec::new(),
    })
}

/// One object of a kind this path reads, with a name.
struct Object {
    kind: String,
    name: String,
    spec: Spec,
}

enum Spec {
    Vpc(VpcFast),
    Peering(PeeringFast),
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

/// The fields of an object, as bits of the ones seen.
const FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        let (mut seen, mut kind, mut name, mut spec) = (0u8, None, None, None);
        while let Some(Text(key)) = map.next_key()? {
            let Some(field) = FIELDS.iter().position(|f| *f == key) else {
                return Err(de::Error::custom("a field the general path refuses"));
            };
            if seen & 1 << field != 0 {
                return Err(de::Error::custom("a field written twice"));
            }
            seen |= 1 << field;
            match FIELDS[field] {
                "kind" => kind = Some(map.next_value::<Text>()?.0),
                "metadata" => name = object_name(&map.next_value::<Value>()?),
                "spec" => {
                    spec = Some(match kind.as_deref() {
                        Some("VPCInfo") => Spec::Vpc(map.next_value()?),
                        Some("Peering" | "GatewayPeering") => Spec::Peering(map.next_value()?),
                        _ => return Err(de::Error::custom("a kind not read here, or none yet")),
                    })
                }
                _ => {
                    map.next_value::<Value>()?;
                }
            }
        }
        match (kind, name, spec) {
            (Some(kind), Some(name), Some(spec)) => Ok(Object { kind, name, spec }),
            _ => Err(de::Error::custom("no kind, name or spec")),
        }
    }
}

/// A string written as one: YAML's numbers, booleans, nulls and tagged scalars are refused
/// (the general path's tree keeps their types, and refuses them where a string is due).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strict;
        impl Visitor<'_> for Strict {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
        }
        // `any`, not `string`: the parser then says what type the scalar resolves to.
        deserializer.deserialize_any(Strict)
    }
}

/// A boolean written as one.
#[derive(Debug, Default)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strict;
        impl Visitor<'_> for Strict {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
        }
        deserializer.deserialize_any(Strict)
    }
}

/// A map with string keys, each written once.
struct Unique<V>(BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Unique<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Strict<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Strict<V> {
            type Value = Unique<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique<V>, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(Text(key)) = map.next_key()? {
                    if out.insert(key, map.next_value()?).is_some() {
                        return Err(de::Error::custom("a key written twice"));
                    }
                }
                Ok(Unique(out))
            }
        }
        deserializer.deserialize_map(Strict(PhantomData))
    }
}

impl<V> Unique<V> {
    fn into_map<W: From<V>>(self) -> BTreeMap<String, W> {
        self.0.into_iter().map(|(k, v)| (k, v.into())).collect()
    }
}

// ---- The specs of the general path (`super::VpcSpec` and the rest), with strict leaves.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VpcFast {
    #[serde(default)]
    vni: Option<Value>,
    #[serde(default)]
    subnets: Option<Unique<SubnetFast>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetFast {
    cidr: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeeringFast {
    #[serde(default)]
    peering: Option<Unique<Option<SideFast>>>,
    #[serde(default)]
    gateway_group: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SideFast {
    #[serde(default)]
    expose: Option<Vec<BlockFast>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockFast {
    #[serde(default)]
    ips: Option<Vec<IpFast>>,
    #[serde(rename = "as", default)]
    as_: Option<Vec<AsFast>>,
    #[serde(default)]
    nat: Option<Value>,
    #[serde(default)]
    default: Flag,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IpFast {
    cidr: Option<Text>,
    not: Option<Text>,
    vpc_subnet: Option<Text>,
    ports: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AsFast {
    cidr: Option<Text>,
    not: Option<Text>,
    ports: Option<Value>,
}

impl From<VpcFast> for VpcSpec {
    fn from(v: VpcFast) -> Self {
        VpcSpec {
            vni: v.vni,
            subnets: v.subnets.map(Unique::into_map),
        }
    }
}

impl From<SubnetFast> for SubnetSpec {
    fn from(s: SubnetFast) -> Self {
        SubnetSpec { cidr: s.cidr.0 }
    }
}

impl From<PeeringFast> for PeeringSpec {
    fn from(p: PeeringFast) -> Self {
        PeeringSpec {
            peering: p.peering.map(|sides| {
                sides
                    .0
                    .into_iter()
                    .map(|(vpc, side)| (vpc, side.map(Into::into)))
                    .collect()
            }),
            gateway_group: p.gateway_group.map(|t| t.0),
        }
    }
}

impl From<SideFast> for SideSpec {
    fn from(s: SideFast) -> Self {
        SideSpec {
            expose: s
                .expose
                .map(|blocks| blocks.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<BlockFast> for BlockSpec {
    fn from(b: BlockFast) -> Self {
        BlockSpec {
            ips: b.ips.map(|ips| ips.into_iter().map(Into::into).collect()),
            as_: b.as_.map(|as_| as_.into_iter().map(Into::into).collect()),
            nat: b.nat,
            default: b.default.0,
        }
    }
}

impl From<IpFast> for IpSpec {
    fn from(ip: IpFast) -> Self {
        IpSpec {
            cidr: ip.cidr.map(|t| t.0),
            not: ip.not.map(|t| t.0),
            vpc_subnet: ip.vpc_subnet.map(|t| t.0),
            ports: ip.ports,
        }
    }
}

impl From<AsFast> for AsSpec {
    fn from(a: AsFast) -> Self {
        AsSpec {
            cidr: a.cidr.map(|t| t.0),
            not: a.not.map(|t| t.0),
            ports: a.ports,
        }
    }
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
        let unusual = [
            // spec before kind
            format!(
                "metadata: {{name: c}}\nspec: {{vni: 30}}\nkind: VPCInfo\n---\n{}",
                base(&[])
            ),
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

    /// What a mutation may write in place of a value: YAML's other types, tags, anchors,
    /// empty and repeated keys, and values of the spec's fields in the wrong place.
    const VALUES: [&str; 30] = [
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
    ];

    /// One edit of a line of a configuration.
    #[derive(Debug, Clone)]
    enum Edit {
        /// The value after the line's first `: ` (or its `- `) replaced.
        Value(usize, usize),
        /// The line written twice: keys repeated, list items added.
        Repeat(usize),
        /// The line removed.
        Remove(usize),
        /// The line swapped with the next: `kind` after `spec`, keys moved between maps.
        Swap(usize),
        /// The line moved two columns right or left.
        Indent(usize, bool),
    }

    fn apply(text: &str, edits: &[Edit]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for edit in edits {
            if lines.is_empty() {
                break;
            }
            let at = |i: usize| i % lines.len();
            match *edit {
                Edit::Value(i, v) => {
                    let i = at(i);
                    let line = &lines[i];
                    let cut = line
                        .find(": ")
                        .map(|c| c + 2)
                        .or_else(|| line.find("- ").map(|c| c + 2));
                    if let Some(cut) = cut {
                        lines[i] = format!("{}{}", &line[..cut], VALUES[v % VALUES.len()]);
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
            4 => (line.clone(), 0..VALUES.len()).prop_map(|(i, v)| Edit::Value(i, v)),
            1 => line.clone().prop_map(Edit::Repeat),
            1 => line.clone().prop_map(Edit::Remove),
            1 => line.clone().prop_map(Edit::Swap),
            1 => (line, any::<bool>()).prop_map(|(i, r)| Edit::Indent(i, r)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8192))]

        /// On any edit of a valid configuration, the fast path either gives up or returns
        /// exactly what the general path returns, and `parse` answers as the general path.
        #[test]
        fn never_reads_otherwise_than_the_general_path(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec(edit(), 1..4),
        ) {
            let text = apply(SEEDS[seed], &edits);
            let general = parse_general(&text, Some("c.yaml"));
            if let Some(fast) = parse(&text, Some("c.yaml")) {
                proptest::prop_assert_eq!(Ok(fast), general.clone(), "{}", text);
            }
            proptest::prop_assert_eq!(parse_any(&text, Some("c.yaml")), general, "{}", text);
        }
    }
}
