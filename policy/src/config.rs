//! Reading and validating the user's configuration (SPEC sections 2 and 4).
//!
//! The text is one or more YAML documents (JSON is YAML too). A document may hold one object,
//! a sequence of objects, or a Kubernetes `List` with `items`. Objects of kind `VPCInfo`,
//! `Peering` and `GatewayPeering` are read; other kinds are skipped with a notice. Any broken
//! rule refuses the whole configuration with a [`ConfigError`] that names the file, the object,
//! the field and the value.
//!
//! Two paths read the text. The fast one (`config/fast.rs`) reads a strict subset of YAML
//! with a reader of its own (`config/fast/subset.rs`) and types each object from what it
//! read; it reads the usual configuration (one object a document, of the kinds above,
//! written in plain block and flow style) and gives up at anything else. The general one
//! reads every document into a YAML tree with libyaml first: it reads whatever the fast one
//! gave up on, and says where every problem is. A configuration of 5,000 peerings (1.7 MB)
//! parses in about 20 ms on the fast path, against about 100 ms on the general one (this
//! project's machine, natively, CPU time).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::DeserializeSeed;
use serde::de::IgnoredAny;
use serde_yaml_ng::Value;

use crate::addr::{RangeSet, net_family};
use crate::model::{Block, Config, Entry, NatMode, Peering, Side, Vpc};
use crate::packet::VpcId;
use crate::ports::PortList;

mod fast;

/// The largest VNI: VXLAN VNIs are 24 bits.
pub const MAX_VNI: u32 = 16_777_215;

/// A refused configuration, and where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the configuration came from, when it came from one.
    pub file: Option<String>,
    /// 1-based index of the YAML document, when the problem is in one.
    pub document: Option<usize>,
    /// The object, as `Kind name`, when the problem is in one.
    pub object: Option<String>,
    /// The field, as a path such as `spec.peering.vpc-1.expose[0].ips[1].cidr`.
    pub field: Option<String>,
    /// The offending value, as written.
    pub value: Option<String>,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            sep = ": ";
        }
        if let Some(doc) = self.document {
            write!(f, "{sep}document {doc}")?;
            sep = ": ";
        }
        if let Some(object) = &self.object {
            write!(f, "{sep}{object}")?;
            sep = ": ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}field `{field}`")?;
            sep = ": ";
        }
        if let Some(value) = &self.value {
            write!(f, "{sep}value `{value}`")?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.message)
    }
}

impl ConfigError {
    /// An error about the configuration as a whole, with no place in it.
    pub fn whole(message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            document: None,
            object: None,
            field: None,
            value: None,
            message: message.into(),
        }
    }
}

/// Reads and validates a configuration. `file` names its source in errors and notices.
pub fn parse(text: &str, file: Option<&str>) -> Result<Config, ConfigError> {
    crate::limits::check_text(text).map_err(|e| ConfigError {
        file: file.map(str::to_owned),
        value: e.value,
        ..ConfigError::whole(e.message)
    })?;
    if !crate::limits::has_aliases(text)
        && let Some(config) = fast::parse(text, file)
    {
        return Ok(config);
    }
    parse_general(text, file)
}

/// [`parse`] of any text within the limits: every document read into a YAML tree, then each
/// object typed from its tree. It says where any problem is, and it is the reference the
/// fast path is held to.
fn parse_general(text: &str, file: Option<&str>) -> Result<Config, ConfigError> {
    let objects = read_objects(text, file)?;
    let mut notices = Vec::new();
    let mut vpc_objects = Vec::new();
    let mut peering_objects = Vec::new();
    for object in objects {
        match object.kind.as_str() {
            "VPCInfo" => vpc_objects.push(object),
            "Peering" | "GatewayPeering" => peering_objects.push(object),
            kind => notices.push(format!(
                "{}document {}: skipped an object of kind `{kind}`{}",
                file.map(|f| format!("{f}: ")).unwrap_or_default(),
                object.ctx.document.unwrap_or(0),
                object
                    .name
                    .map(|n| format!(" named `{n}`"))
                    .unwrap_or_default(),
            )),
        }
    }
    let vpcs = validate_vpcs(vpc_objects.into_iter().map(Named::typed))?;
    let peerings = peering_objects.into_iter().map(Named::typed);
    let (peerings, contexts) = validate_peerings(peerings, &vpcs)?;
    check_default_blocks(&vpcs, &peerings, &contexts)?;
    Ok(Config {
        vpcs: vpcs.into_iter().map(|(v, _)| v).collect(),
        peerings,
        notices,
    })
}

/// An object's name and typed spec, and where it is: what the rules are checked on.
struct Named<S> {
    name: String,
    spec: S,
    ctx: Ctx,
}

impl<S: for<'de> Deserialize<'de>> Named<S> {
    /// The name, then the spec, of an object read as a YAML tree.
    fn typed(object: RawObject) -> Result<Named<S>, ConfigError> {
        let name = require_name(&object)?;
        let spec = typed::<S>(&object)?.spec;
        Ok(Named {
            name,
            spec,
            ctx: object.ctx,
        })
    }
}

/// Where an error is: file, document and object. Fields are added per error.
#[derive(Debug, Clone)]
struct Ctx {
    file: Option<String>,
    document: Option<usize>,
    object: Option<String>,
}

impl Ctx {
    fn err(
        &self,
        field: impl fmt::Display,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            document: self.document,
            object: self.object.clone(),
            field: Some(field.to_string()),
            value: Some(value.to_string()),
            message: message.into(),
        }
    }

    fn err_no_value(&self, field: impl fmt::Display, message: impl Into<String>) -> ConfigError {
        ConfigError {
            value: None,
            ..self.err(field, "", message)
        }
    }
}

/// A field's path, written out only when an error names it: the rules are checked on
/// every entry, and a path formatted for each would cost more than the checks.
struct Path<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Path<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// One object of the input, before its kind is looked at.
struct RawObject {
    kind: String,
    name: Option<String>,
    value: Value,
    ctx: Ctx,
}

fn read_objects(text: &str, file: Option<&str>) -> Result<Vec<RawObject>, ConfigError> {
    let yaml_error = |e: serde_yaml_ng::Error, document: usize| {
        let line = e.location().map(|l| l.line());
        let at = e
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        ConfigError {
            field: None,
            value: None,
            message: format!("not valid YAML{at}: {e}"),
            file: file.map(str::to_owned),
            document: Some(document),
            object: line.and_then(|line| crate::limits::object_at_line(text, line)),
        }
    };
    if crate::limits::has_aliases(text) {
        // Aliases expand when read: count the nodes they expand to before building anything.
        let budget = std::cell::Cell::new(0);
        for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            crate::limits::Budget(&budget)
                .deserialize(document)
                .map_err(|e| yaml_error(e, i + 1))?;
        }
    }
    let mut objects = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let ctx = Ctx {
            file: file.map(str::to_owned),
            document: Some(i + 1),
            object: None,
        };
        let value = Value::deserialize(document).map_err(|e| yaml_error(e, i + 1))?;
        collect_objects(value, &ctx, "", &mut objects)?;
    }
    Ok(objects)
}

fn collect_objects(
    value: Value,
    ctx: &Ctx,
    at: &str,
    out: &mut Vec<RawObject>,
) -> Result<(), ConfigError> {
    match value {
        Value::Null => Ok(()),
        Value::Sequence(items) => {
            for (i, item) in items.into_iter().enumerate() {
                collect_objects(item, ctx, &format!("{at}[{i}]"), out)?;
            }
            Ok(())
        }
        Value::Mapping(map) => {
            let kind = match map.get("kind") {
                Some(Value::String(kind)) => kind.clone(),
                Some(other) => {
                    return Err(ctx.err(field_at(at, "kind"), show(other), "not a string"));
                }
                None => {
                    return Err(ctx
                        .err_no_value(field_at(at, "kind"), "missing: every object needs a kind"));
                }
            };
            if let (true, Some(items)) = (kind.ends_with("List"), map.get("items")) {
                return collect_objects(items.clone(), ctx, &field_at(at, "items"), out);
            }
            let name = map.get("metadata").and_then(object_name);
            let object = Some(match &name {
                Some(name) => format!("{kind} `{name}`"),
                None if at.is_empty() => kind.clone(),
                None => format!("{kind} at `{at}`"),
            });
            let ctx = Ctx {
                object,
                ..ctx.clone()
            };
            out.push(RawObject {
                kind,
                name,
                value: Value::Mapping(map),
                ctx,
            });
            Ok(())
        }
        other => Err(ctx.err(
            if at.is_empty() { "(document)" } else { at },
            show(&other),
            "expected an object with `kind`",
        )),
    }
}

/// The name an object's `metadata` gives it: a non-empty string, or none.
fn object_name(metadata: &Value) -> Option<String> {
    metadata
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

fn field_at(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}

/// A short rendering of a YAML value for messages.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .map(|s| s.trim().replace('\n', " "))
            .unwrap_or_else(|_| "?".to_owned()),
    }
}

// ---- The typed shape of the known kinds. Unknown fields are refused, except in `metadata`
// ---- (Kubernetes adds its own there) and `status` (ignored).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Object<S> {
    #[serde(rename = "apiVersion", default)]
    _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    _kind: IgnoredAny,
    #[serde(rename = "metadata")]
    _metadata: IgnoredAny,
    spec: S,
    #[serde(rename = "status", default)]
    _status: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VpcSpec {
    #[serde(default)]
    vni: Option<Value>,
    #[serde(default)]
    subnets: Option<BTreeMap<String, SubnetSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetSpec {
    cidr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PeeringSpec<'a> {
    #[serde(default)]
    peering: Option<BTreeMap<Cow<'a, str>, Option<SideSpec<'a>>>>,
    #[serde(default)]
    gateway_group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SideSpec<'a> {
    #[serde(default)]
    expose: Option<Vec<BlockSpec<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockSpec<'a> {
    #[serde(default)]
    ips: Option<Vec<IpSpec<'a>>>,
    #[serde(rename = "as", default)]
    as_: Option<Vec<AsSpec<'a>>>,
    #[serde(default)]
    nat: Option<Value>,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IpSpec<'a> {
    cidr: Option<Cow<'a, str>>,
    not: Option<Cow<'a, str>>,
    vpc_subnet: Option<Cow<'a, str>>,
    ports: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AsSpec<'a> {
    cidr: Option<Cow<'a, str>>,
    not: Option<Cow<'a, str>>,
    ports: Option<Value>,
}

fn typed<S: for<'de> Deserialize<'de>>(object: &RawObject) -> Result<Object<S>, ConfigError> {
    // Tracking the path costs an allocation per field: it is only done again for an object
    // that failed, to say where.
    if let Ok(typed) = Object::deserialize(&object.value) {
        return Ok(typed);
    }
    serde_path_to_error::deserialize(&object.value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        // serde names an unknown field in backticks: that name is the offending value.
        let value = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        ConfigError {
            value,
            ..object.ctx.err_no_value(&field, message)
        }
    })
}

fn require_name(object: &RawObject) -> Result<String, ConfigError> {
    object.name.clone().ok_or_else(|| {
        object
            .ctx
            .err_no_value("metadata.name", "missing: every object needs a name")
    })
}

// ---- VPCs ----

/// The VPCs, in name order. `objects` are typed one at a time, as the rules reach them, so
/// that the first problem in the input is the one reported.
fn validate_vpcs(
    objects: impl IntoIterator<Item = Result<Named<VpcSpec>, ConfigError>>,
) -> Result<Vec<(Vpc, Ctx)>, ConfigError> {
    let mut vpcs: Vec<(Vpc, Ctx)> = Vec::new();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_vni: BTreeMap<u32, usize> = BTreeMap::new();
    for object in objects {
        let Named { name, spec, ctx } = object?;
        let vni = match &spec.vni {
            None => {
                return Err(
                    ctx.err_no_value("spec.vni", "missing: a VPC needs a VNI from 1 to 16777215")
                );
            }
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(MAX_VNI)).contains(&n) => n as u32,
                _ => {
                    return Err(ctx.err(
                        "spec.vni",
                        show(v),
                        "a VNI must be a whole number from 1 to 16777215",
                    ));
                }
            },
        };
        if let Some(&other) = by_name.get(&name) {
            let first = &vpcs[other].1;
            return Err(ctx.err(
                "metadata.name",
                &name,
                format!(
                    "two VPCs are named `{name}` (the first is in document {})",
                    first.document.unwrap_or(0)
                ),
            ));
        }
        if let Some(&other) = by_vni.get(&vni) {
            return Err(ctx.err(
                "spec.vni",
                vni,
                format!(
                    "VNI {vni} is already the VNI of VPC `{}`",
                    vpcs[other].0.name
                ),
            ));
        }
        let mut subnets = BTreeMap::new();
        for (subnet, s) in spec.subnets.unwrap_or_default() {
            let field = Path(|f: &mut fmt::Formatter<'_>| write!(f, "spec.subnets.{subnet}.cidr"));
            let net = parse_prefix(&ctx, &field, &s.cidr)?;
            subnets.insert(subnet, net);
        }
        by_name.insert(name.clone(), vpcs.len());
        by_vni.insert(vni, vpcs.len());
        vpcs.push((Vpc { name, vni, subnets }, ctx));
    }
    vpcs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(vpcs)
}

/// The index of each name of a list, by the name's hash: no copy of the names kept.
struct Names {
    by_hash: HashMap<u64, usize>,
    state: RandomState,
}

impl Names {
    fn with_capacity(count: usize) -> Names {
        Names {
            by_hash: HashMap::with_capacity(count),
            state: RandomState::new(),
        }
    }

    fn hash(&self, name: &str) -> u64 {
        self.state.hash_one(name)
    }

    /// The index in `list` of the item `name_of` names `name`; `list` holds the items
    /// inserted so far, at their indexes.
    fn find<T>(&self, name: &str, list: &[T], name_of: impl Fn(&T) -> &str) -> Option<usize> {
        let &first = self.by_hash.get(&self.hash(name))?;
        if list.get(first).map(&name_of) == Some(name) {
            return Some(first);
        }
        // Two names of one hash.
        list.iter().position(|item| name_of(item) == name)
    }

    fn insert(&mut self, name: &str, index: usize) {
        let hash = self.hash(name);
        self.by_hash.entry(hash).or_insert(index);
    }
}

/// Parses a prefix, refusing host bits with a hint at the prefix that was probably meant.
fn parse_prefix(ctx: &Ctx, field: &dyn fmt::Display, text: &str) -> Result<IpNet, ConfigError> {
    let net: IpNet = text.trim().parse().map_err(|_| {
        let hint = if text.trim().parse::<std::net::IpAddr>().is_ok() {
            " (a single address is written with its length, such as /32 or /128)"
        } else {
            ""
        };
        ctx.err(field, text, format!("not an IP prefix{hint}"))
    })?;
    if net.trunc() != net {
        return Err(ctx.err(
            field,
            text,
            format!("host bits are set: did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_ports(
    ctx: &Ctx,
    field: &dyn fmt::Display,
    value: &Value,
) -> Result<PortList, ConfigError> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => {
            return Err(ctx.err(
                field,
                show(other),
                "expected a port, a range `80-90` or a comma list `22,80-90`",
            ));
        }
    };
    PortList::parse(&text).map_err(|e| ctx.err(field, &text, e.to_string()))
}

// ---- Peerings ----

/// The peerings, in input order, with where each is; `objects` as in [`validate_vpcs`].
fn validate_peerings<'a>(
    objects: impl IntoIterator<Item = Result<Named<PeeringSpec<'a>>, ConfigError>>,
    vpcs: &[(Vpc, Ctx)],
) -> Result<(Vec<Peering>, Vec<Ctx>), ConfigError> {
    let objects = objects.into_iter();
    let count = objects.size_hint().0;
    let mut peerings: Vec<Peering> = Vec::with_capacity(count);
    let mut contexts: Vec<Ctx> = Vec::with_capacity(count);
    let mut by_pair: HashMap<[VpcId; 2], usize> = HashMap::with_capacity(count);
    let mut by_name = Names::with_capacity(count);
    let mut written = Vec::new();
    for object in objects {
        let Named { name, spec, ctx } = object?;
        if let Some(other) = by_name.find(&name, &peerings, |p| &p.name) {
            return Err(ctx.err(
                "metadata.name",
                &name,
                format!("two peerings are named `{}`", peerings[other].name),
            ));
        }
        let entries = spec.peering.unwrap_or_default();
        if entries.len() != 2 {
            let names: Vec<&str> = entries.keys().map(|k| &**k).collect();
            return Err(ctx.err(
                "spec.peering",
                format!("[{}]", names.join(", ")),
                format!(
                    "a peering names exactly two distinct VPCs, this one names {}",
                    entries.len()
                ),
            ));
        }
        let mut sides = Vec::with_capacity(2);
        for (vpc_name, side) in entries {
            let field = Path(|f: &mut fmt::Formatter<'_>| write!(f, "spec.peering.{vpc_name}"));
            let Ok(index) = vpcs.binary_search_by(|(v, _)| v.name.as_str().cmp(&vpc_name)) else {
                return Err(ctx.err(&field, &vpc_name, "names a VPC that has no VPCInfo"));
            };
            let vpc = &vpcs[index].0;
            let blocks = side.and_then(|s| s.expose).unwrap_or_default();
            let blocks = blocks
                .into_iter()
                .enumerate()
                .map(|(k, b)| {
                    let at = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{field}.expose[{k}]"));
                    validate_block(&ctx, &at, vpc, b, &mut written)
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_static_overlap(&ctx, &field, &blocks)?;
            sides.push(Side {
                vpc: VpcId(index as u32),
                blocks,
            });
        }
        let Ok(sides): Result<[Side; 2], _> = sides.try_into() else {
            unreachable!("two entries make two sides")
        };
        let pair = [sides[0].vpc, sides[1].vpc];
        if let Some(&other) = by_pair.get(&pair) {
            let names = pair.map(|id| vpcs[id.0 as usize].0.name.as_str());
            return Err(ctx.err(
                "spec.peering",
                format!("[{}]", names.join(", ")),
                format!(
                    "these two VPCs are already peered by `{}`",
                    peerings[other].name
                ),
            ));
        }
        by_pair.insert(pair, peerings.len());
        by_name.insert(&name, peerings.len());
        peerings.push(Peering {
            name,
            gateway_group: spec.gateway_group,
            sides,
        });
        contexts.push(ctx);
    }
    Ok((peerings, contexts))
}

/// Where a prefix of a block is written: `{list}[{index}].{key}`.
#[derive(Debug, Clone, Copy)]
struct Written {
    list: &'static str,
    index: usize,
    key: &'static str,
}

impl Written {
    /// The field, under the block's path `at`.
    fn at<'a>(&'a self, at: &'a dyn fmt::Display) -> impl fmt::Display + 'a {
        Path(move |f: &mut fmt::Formatter<'_>| {
            write!(f, "{at}.{}[{}].{}", self.list, self.index, self.key)
        })
    }
}

/// An expose block's rules. `written` is room for its prefixes, kept between blocks.
fn validate_block(
    ctx: &Ctx,
    at: &dyn fmt::Display,
    vpc: &Vpc,
    spec: BlockSpec<'_>,
    written: &mut Vec<(Written, IpNet)>,
) -> Result<Block, ConfigError> {
    let mut block = Block {
        default: spec.default,
        ..Block::default()
    };
    // Every prefix of the block with where it is written, for the family check.
    written.clear();
    for (j, ip) in spec.ips.unwrap_or_default().into_iter().enumerate() {
        let field = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{at}.ips[{j}]"));
        let set = [ip.cidr.is_some(), ip.not.is_some(), ip.vpc_subnet.is_some()];
        if set.iter().filter(|&&s| s).count() != 1 {
            return Err(ctx.err_no_value(
                &field,
                "an ips entry has exactly one of `cidr`, `not` and `vpcSubnet`",
            ));
        }
        let ports = match &ip.ports {
            Some(_) if ip.not.is_some() => {
                return Err(ctx.err_no_value(
                    format!("{field}.ports"),
                    "a `not` entry removes addresses for every port and takes no `ports`",
                ));
            }
            Some(v) => {
                let f = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{field}.ports"));
                Some(parse_ports(ctx, &f, v)?)
            }
            None => None,
        };
        let key = |key| Written {
            list: "ips",
            index: j,
            key,
        };
        if let Some(cidr) = &ip.cidr {
            let w = key("cidr");
            let net = parse_prefix(ctx, &w.at(at), cidr)?;
            written.push((w, net));
            block.ips.push(Entry {
                net,
                ports,
                subnet: None,
            });
        } else if let Some(not) = &ip.not {
            let w = key("not");
            let net = parse_prefix(ctx, &w.at(at), not)?;
            written.push((w, net));
            block.ips_not.push(net);
        } else if let Some(subnet) = &ip.vpc_subnet {
            let w = key("vpcSubnet");
            let Some(&net) = vpc.subnets.get(&**subnet) else {
                return Err(ctx.err(
                    w.at(at),
                    subnet,
                    format!("VPC `{}` has no subnet of that name", vpc.name),
                ));
            };
            written.push((w, net));
            block.ips.push(Entry {
                net,
                ports,
                subnet: Some(subnet.to_string()),
            });
        }
    }
    for (j, item) in spec.as_.unwrap_or_default().into_iter().enumerate() {
        let field = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{at}.as[{j}]"));
        if item.cidr.is_some() == item.not.is_some() {
            return Err(
                ctx.err_no_value(&field, "an `as` entry has exactly one of `cidr` and `not`")
            );
        }
        let key = |key| Written {
            list: "as",
            index: j,
            key,
        };
        if let Some(cidr) = &item.cidr {
            let ports = match &item.ports {
                Some(v) => {
                    let f = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{field}.ports"));
                    Some(parse_ports(ctx, &f, v)?)
                }
                None => None,
            };
            let w = key("cidr");
            let net = parse_prefix(ctx, &w.at(at), cidr)?;
            written.push((w, net));
            block.as_.push(Entry {
                net,
                ports,
                subnet: None,
            });
        } else if let Some(not) = &item.not {
            if item.ports.is_some() {
                return Err(ctx.err_no_value(
                    format!("{field}.ports"),
                    "a `not` entry removes addresses for every port and takes no `ports`",
                ));
            }
            let w = key("not");
            let net = parse_prefix(ctx, &w.at(at), not)?;
            written.push((w, net));
            block.as_not.push(net);
        }
    }
    if let Some(nat) = &spec.nat {
        let field = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{at}.nat"));
        block.nat = parse_nat(ctx, &field, nat)?;
    }

    if block.ips.is_empty() && block.ips_not.is_empty() && !block.default {
        return Err(ctx.err_no_value(at, "an expose block needs `ips` or `default: true`"));
    }
    if let Some((first_field, first)) = written.first() {
        let family = net_family(first);
        if let Some((field, net)) = written.iter().find(|(_, n)| net_family(n) != family) {
            return Err(ctx.err(
                field.at(at),
                net,
                format!(
                    "an expose block mixes IPv4 and IPv6 (`{}` is {first})",
                    first_field.at(at)
                ),
            ));
        }
    }
    check_nots(ctx, at, "ips", &block.ips, &block.ips_not, written)?;
    check_nots(ctx, at, "as", &block.as_, &block.as_not, written)?;
    if block.nat == Some(NatMode::Static) && !block.as_.is_empty() {
        let (ips, public) = (private_set(&block), public_set(&block));
        if ips.count() != public.count() {
            let written_as: Vec<String> = block
                .as_
                .iter()
                .map(|e| e.net.to_string())
                .chain(block.as_not.iter().map(|n| format!("not {n}")))
                .collect();
            return Err(ctx.err(
                format!("{at}.as"),
                format!("{} ({} addresses)", written_as.join(", "), public.count()),
                format!("with `nat: static`, `ips` and `as` cover the same number of addresses; `ips` covers {}", ips.count()),
            ));
        }
    }
    Ok(block)
}

/// Refuses a `not` outside every `cidr` of its list (`ips` or `as` of the block at `at`),
/// and nots that leave no address.
fn check_nots(
    ctx: &Ctx,
    at: &dyn fmt::Display,
    list: &'static str,
    entries: &[Entry],
    nots: &[IpNet],
    written: &[(Written, IpNet)],
) -> Result<(), ConfigError> {
    let list_field = Path(|f: &mut fmt::Formatter<'_>| write!(f, "{at}.{list}"));
    for not in nots {
        let overlaps = entries
            .iter()
            .any(|e| e.net.contains(&not.network()) || not.contains(&e.net.network()));
        if !overlaps {
            let field = written
                .iter()
                .find(|(w, n)| n == not && w.list == list && w.key == "not")
                .map_or_else(|| list_field.to_string(), |(w, _)| w.at(at).to_string());
            return Err(ctx.err(
                field,
                not,
                "this `not` lies outside every `cidr` of its list",
            ));
        }
    }
    if !nots.is_empty() {
        let left =
            RangeSet::from_nets(entries.iter().map(|e| &e.net)).minus(&RangeSet::from_nets(nots));
        if left.is_empty() {
            let value: Vec<String> = nots.iter().map(ToString::to_string).collect();
            return Err(ctx.err(
                list_field,
                format!("not: [{}]", value.join(", ")),
                "the `not` entries leave the block with no address",
            ));
        }
    }
    Ok(())
}

fn private_set(block: &Block) -> RangeSet {
    RangeSet::from_nets(block.ips.iter().map(|e| &e.net))
        .minus(&RangeSet::from_nets(&block.ips_not))
}

fn public_set(block: &Block) -> RangeSet {
    RangeSet::from_nets(block.as_.iter().map(|e| &e.net)).minus(&RangeSet::from_nets(&block.as_not))
}

fn block_family(block: &Block) -> Option<crate::addr::Family> {
    block
        .ips
        .first()
        .or(block.as_.first())
        .map(|e| net_family(&e.net))
}

fn parse_nat(
    ctx: &Ctx,
    at: &dyn fmt::Display,
    nat: &Value,
) -> Result<Option<NatMode>, ConfigError> {
    let Value::Mapping(map) = nat else {
        if nat.is_null() {
            return Ok(None);
        }
        return Err(ctx.err(
            at,
            show(nat),
            "expected one of `static`, `masquerade`, `portForward`, `stateless`, `stateful`",
        ));
    };
    let mut mode = None;
    for (key, body) in map {
        let key = show(key);
        let field = format!("{at}.{key}");
        let (found, allowed): (NatMode, &[&str]) = match key.as_str() {
            "static" | "stateless" => (NatMode::Static, &[]),
            "masquerade" | "stateful" => (NatMode::Masquerade, &["idleTimeout"]),
            "portForward" => (NatMode::PortForward, &["idleTimeout", "ports"]),
            _ => return Err(ctx.err(&field, &key, "unknown NAT mode: expected `static`, `masquerade`, `portForward`, `stateless` or `stateful`")),
        };
        if mode.is_some() {
            return Err(ctx.err(&field, &key, "a block has one NAT mode"));
        }
        match body {
            Value::Null => {}
            Value::Mapping(fields) => {
                if let Some((name, _)) = fields
                    .iter()
                    .find(|(k, _)| !allowed.contains(&show(k).as_str()))
                {
                    let name = show(name);
                    return Err(ctx.err(
                        format!("{field}.{name}"),
                        &name,
                        format!(
                            "unknown field; `{key}` takes {}",
                            if allowed.is_empty() {
                                "no fields".to_owned()
                            } else {
                                allowed.join(", ")
                            }
                        ),
                    ));
                }
            }
            other => return Err(ctx.err(&field, show(other), "expected an object")),
        }
        mode = Some(found);
    }
    Ok(mode)
}

/// Two static blocks of one side may not share a private or a public address.
fn check_static_overlap(
    ctx: &Ctx,
    side_field: &dyn fmt::Display,
    blocks: &[Block],
) -> Result<(), ConfigError> {
    let statics: Vec<(usize, &Block)> = blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.nat == Some(NatMode::Static))
        .collect();
    for (i, &(k1, b1)) in statics.iter().enumerate() {
        for &(k2, b2) in &statics[i + 1..] {
            if block_family(b1) != block_family(b2) {
                continue;
            }
            if private_set(b1).intersects(&private_set(b2)) {
                let value: Vec<String> = b2.ips.iter().map(|e| e.net.to_string()).collect();
                return Err(ctx.err(format!("{side_field}.expose[{k2}].ips"), value.join(", "), format!("overlaps the `ips` of `nat: static` block expose[{k1}]: a one-to-one mapping would be ambiguous")));
            }
            if !b1.as_.is_empty()
                && !b2.as_.is_empty()
                && public_set(b1).intersects(&public_set(b2))
            {
                let value: Vec<String> = b2.as_.iter().map(|e| e.net.to_string()).collect();
                return Err(ctx.err(format!("{side_field}.expose[{k2}].as"), value.join(", "), format!("overlaps the `as` of `nat: static` block expose[{k1}]: a one-to-one mapping would be ambiguous")));
            }
        }
    }
    Ok(())
}

/// At most one `default: true` block may face any one VPC, across all of its peerings.
fn check_default_blocks(
    vpcs: &[(Vpc, Ctx)],
    peerings: &[Peering],
    contexts: &[Ctx],
) -> Result<(), ConfigError> {
    let mut facing: BTreeMap<VpcId, &str> = BTreeMap::new();
    for (peering, ctx) in peerings.iter().zip(contexts) {
        for (me, other) in [
            (&peering.sides[0], &peering.sides[1]),
            (&peering.sides[1], &peering.sides[0]),
        ] {
            for (k, block) in other.blocks.iter().enumerate() {
                if !block.default {
                    continue;
                }
                if let Some(first) = facing.insert(me.vpc, &peering.name) {
                    let faced = &vpcs[me.vpc.0 as usize].0.name;
                    let exposer = &vpcs[other.vpc.0 as usize].0.name;
                    return Err(ctx.err(
                        format!("spec.peering.{exposer}.expose[{k}].default"),
                        "true",
                        format!("a second default block facing VPC `{faced}` (the first is in peering `{first}`)"),
                    ));
                }
            }
        }
    }
    Ok(())
}
