//! The one table of how the equalize options are spelled outside JSON: each row names a field of
//! [`Options`] by its JSON path and says how `onnx-cle equalize` (a CLI flag) and `POST /equalize`
//! (a query parameter) take it.
//!
//! Everything else about an option is the field's own: its doc comment (read back from the
//! OpenAPI schema of [`Options`], [`doc`]), its type and its default. A value given as a flag or a
//! query parameter is turned into JSON at the field's path and read with serde ([`apply`]), so the
//! CLI, the query string and the JSON `options` part of a job accept exactly the same values; the
//! CLI builds its arguments from this table and the service its query parameters and their
//! OpenAPI description. Adding an option: its field (doc, type, default) and, when the CLI or the
//! query takes it, its row here.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value as Json};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::{
    Accumulation, ActivationType, BiasCorrection, Calibration, Compat, EncodingsVersion,
    Granularity, HbfMode, Options, Relu6Policy, Rounding, Scaling, Select, Step, TargetPreset,
    WeightType,
};

/// One option as the CLI and the query string spell it.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// The field's JSON path in [`Options`] (`verify.budget_s`).
    pub field: &'static str,
    /// Its query parameter of `POST /equalize`; `None`: jobs take it only in the JSON options.
    pub query: Option<&'static str>,
    /// Its CLI flag; `None`: the CLI sets it otherwise (an output path) or not at all.
    pub cli: Option<Cli>,
    /// The shape of its values.
    pub kind: Kind,
}

/// How the CLI spells a flag.
#[derive(Debug, Clone, Copy)]
pub enum Cli {
    /// `--query-name VALUE`: the query parameter's name in kebab-case (lists: comma-separated or
    /// repeated).
    Value,
    /// `--long VALUE`.
    Named {
        /// The long flag.
        long: &'static str,
        /// Another spelling (shown in the help).
        alias: Option<&'static str>,
        /// The placeholder in the help.
        value_name: Option<&'static str>,
    },
    /// `--long` sets the field to `true`.
    On(&'static str),
    /// `--long` sets the field to `false`.
    Off(&'static str),
}

/// The shape of a flag's values, and of its query parameter in the OpenAPI document.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `true` / `false` (`1`, `yes`, `on` / `0`, `no`, `off` in a query).
    Bool,
    /// An integer (`format` and bounds of the query parameter's schema).
    Integer {
        /// OpenAPI format (`int32`, `int64`).
        format: Option<Format>,
        /// Least value.
        min: Option<i64>,
        /// Largest value.
        max: Option<i64>,
    },
    /// A number.
    Number {
        /// OpenAPI format (`float`, `double`).
        format: Format,
        /// Least value.
        min: Option<i64>,
    },
    /// One value of an enum (its schema: name and values).
    Enum(fn() -> Choices),
    /// Pipeline steps, comma-separated or repeated (`none` alone: no step).
    Steps,
    /// Strings, one per repetition.
    Strings,
    /// Two numbers `lo,hi`.
    Range,
    /// Comma-separated numbers.
    Numbers,
    /// Input shapes `NAME:D0xD1x…`, comma-separated or repeated (trtexec's `--shapes`
    /// spelling), into a JSON object `{NAME: [D0, D1, …]}`.
    Shapes,
}

/// The OpenAPI format of a numeric query parameter.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `float`.
    Float,
    /// `double`.
    Double,
}

impl Format {
    fn known(self) -> SchemaFormat {
        SchemaFormat::KnownFormat(match self {
            Format::Int32 => KnownFormat::Int32,
            Format::Int64 => KnownFormat::Int64,
            Format::Float => KnownFormat::Float,
            Format::Double => KnownFormat::Double,
        })
    }
}

/// The values of an enum option, as its schema names them.
#[derive(Debug, Clone)]
pub struct Choices {
    /// The schema's name (`Relu6Policy`).
    pub name: String,
    /// Its values (`exact`, `replace`, `keep`).
    pub values: Vec<String>,
}

fn choices<T: ToSchema>() -> Choices {
    let values = serde_json::to_value(T::schema())
        .ok()
        .and_then(|s| s.get("enum").cloned())
        .and_then(|e| serde_json::from_value(e).ok())
        .unwrap_or_default();
    Choices {
        name: T::name().into_owned(),
        values,
    }
}

const fn flag(field: &'static str, query: &'static str, cli: Cli, kind: Kind) -> Flag {
    Flag {
        field,
        query: Some(query),
        cli: Some(cli),
        kind,
    }
}

const fn query_only(field: &'static str, query: &'static str, kind: Kind) -> Flag {
    Flag {
        field,
        query: Some(query),
        cli: None,
        kind,
    }
}

const fn cli_only(field: &'static str, cli: Cli, kind: Kind) -> Flag {
    Flag {
        field,
        query: None,
        cli: Some(cli),
        kind,
    }
}

const fn named(long: &'static str) -> Cli {
    Cli::Named {
        long,
        alias: None,
        value_name: None,
    }
}

const fn aliased(long: &'static str, alias: &'static str) -> Cli {
    Cli::Named {
        long,
        alias: Some(alias),
        value_name: None,
    }
}

const fn shown(long: &'static str, value_name: &'static str) -> Cli {
    Cli::Named {
        long,
        alias: None,
        value_name: Some(value_name),
    }
}

const fn one_of<T: ToSchema>() -> Kind {
    Kind::Enum(choices::<T>)
}

const fn int(format: Option<Format>, min: Option<i64>, max: Option<i64>) -> Kind {
    Kind::Integer { format, min, max }
}

const fn int32(min: i64, max: i64) -> Kind {
    int(Some(Format::Int32), Some(min), Some(max))
}

const fn int64(min: i64) -> Kind {
    int(Some(Format::Int64), Some(min), None)
}

const fn float(min: i64) -> Kind {
    Kind::Number {
        format: Format::Float,
        min: Some(min),
    }
}

const fn double(min: i64) -> Kind {
    Kind::Number {
        format: Format::Double,
        min: Some(min),
    }
}

/// Every option the CLI or the query string takes, in the order `--help` and the OpenAPI
/// document list them.
#[rustfmt::skip]
pub const FLAGS: &[Flag] = &[
    flag("steps", "steps", Cli::Value, Kind::Steps),
    flag("relu6", "relu6", Cli::Value, one_of::<Relu6Policy>()),
    flag("hbf", "hbf", Cli::Value, one_of::<HbfMode>()),
    flag("compat", "compat", Cli::Value, one_of::<Compat>()),
    flag("start", "start", Cli::Value, Kind::Strings),
    flag("output", "output", aliased("output-op", "output-name"), Kind::Strings),
    flag("iterations", "iterations", Cli::Value, int32(1, 1000)),
    flag("threshold", "threshold", Cli::Value, float(0)),
    flag("verify.enabled", "verify", Cli::Off("no-verify"), Kind::Bool),
    flag("verify.seed", "seed", Cli::Value, int64(0)),
    flag("verify.dynamic_dim", "dynamic_dim", Cli::Value, int(None, Some(1), Some(4096))),
    flag("verify.input_shapes", "input_shape", shown("input-shape", "NAME:D0xD1x…"), Kind::Shapes),
    flag("balance", "balance", Cli::Value, float(1)),
    flag("scaling", "scaling", Cli::Value, one_of::<Scaling>()),
    flag("quant.end_to_end", "quant_e2e", Cli::On("quant-e2e"), Kind::Bool),
    flag("verify.budget_s", "verify_budget", shown("verify-budget", "SECONDS"), double(0)),
    flag("quant.layers", "quant_table", Cli::Off("no-quant-table"), Kind::Bool),
    cli_only("quant.w8a8", Cli::Off("no-w8a8"), Kind::Bool),
    cli_only("quant.sensitivity", Cli::On("sensitivity"), Kind::Bool),
    query_only("exports.qdq", "qdq", Kind::Bool),
    query_only("exports.encodings", "encodings", one_of::<EncodingsVersion>()),
    query_only("exports.ort_overrides", "ort_overrides", Kind::Bool),
    cli_only("exports.calibration", named("calibration"), one_of::<Calibration>()),
    cli_only("exports.percentile", named("percentile"), float(50)),
    flag("exports.quantize_outputs", "quantize_outputs", Cli::On("quantize-outputs"), Kind::Bool),
    flag("exports.input_range", "input_range", shown("input-range", "LO,HI"), Kind::Range),
    flag("select", "select", Cli::Value, one_of::<Select>()),
    flag("target.preset", "target", Cli::Value, one_of::<TargetPreset>()),
    flag("target.weight_granularity", "weight_granularity", Cli::Value, one_of::<Granularity>()),
    flag("target.weight_bits", "weight_bits", Cli::Value, int32(2, 8)),
    flag("target.weight_type", "weight_type", Cli::Value, one_of::<WeightType>()),
    flag("target.activation_type", "activation_type", Cli::Value, one_of::<ActivationType>()),
    flag("target.accumulation", "accumulation", Cli::Value, one_of::<Accumulation>()),
    flag("target.activation_symmetric", "activation_symmetric", Cli::On("activation-symmetric"), Kind::Bool),
    flag("deploy.bias_correction", "bias_correction", Cli::Value, one_of::<BiasCorrection>()),
    flag("deploy.rounding", "rounding", Cli::Value, one_of::<Rounding>()),
    flag("strict_int8", "strict_int8", Cli::On("strict-int8"), Kind::Bool),
    flag("exports.mixed_precision", "mixed_precision", shown("mixed-precision", "SHARE"), float(0)),
    query_only("deploy.model", "deploy", Kind::Bool),
    cli_only("deploy.input_mean", named("input-mean"), Kind::Numbers),
];

impl Flag {
    /// The row of the field at `path`.
    pub fn of(path: &str) -> Option<&'static Flag> {
        FLAGS.iter().find(|f| f.field == path)
    }

    /// The row whose query parameter is `name`.
    pub fn by_query(name: &str) -> Option<&'static Flag> {
        FLAGS.iter().find(|f| f.query == Some(name))
    }

    /// The CLI's long flag.
    pub fn long(&self) -> Option<String> {
        self.cli.and_then(|c| match c {
            Cli::Value => self.query.map(|q| q.replace('_', "-")),
            Cli::Named { long, .. } | Cli::On(long) | Cli::Off(long) => Some(long.into()),
        })
    }

    /// The field's documentation (its doc comment in [`Options`]).
    pub fn doc(&self) -> String {
        doc(self.field)
    }

    /// The values of an enum flag.
    pub fn choices(&self) -> Option<Choices> {
        match self.kind {
            Kind::Enum(f) => Some(f()),
            _ => None,
        }
    }

    /// The schema of its query parameter.
    pub fn query_schema(&self) -> RefOr<Schema> {
        let reference = |name: &str| RefOr::Ref(Ref::from_schema_name(name));
        let string = || ObjectBuilder::new().schema_type(Type::String);
        match self.kind {
            Kind::Bool => ObjectBuilder::new().schema_type(Type::Boolean).into(),
            Kind::Integer { format, min, max } => ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(format.map(Format::known))
                .minimum(min.map(|m| m as isize))
                .maximum(max.map(|m| m as isize))
                .into(),
            Kind::Number { format, min } => ObjectBuilder::new()
                .schema_type(Type::Number)
                .format(Some(format.known()))
                .minimum(min.map(|m| m as isize))
                .into(),
            Kind::Enum(f) => reference(&f().name),
            Kind::Steps => ArrayBuilder::new()
                .items(reference(&<Step as ToSchema>::name()))
                .into(),
            Kind::Strings => ArrayBuilder::new().items(string()).into(),
            Kind::Shapes => ArrayBuilder::new().items(string()).into(),
            Kind::Range | Kind::Numbers => string().into(),
        }
    }
}

/// A value a flag or query parameter cannot take.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagError {
    /// The option's JSON path.
    pub field: &'static str,
    /// What is wrong with the value.
    pub message: String,
    /// `true`: a value of the right type that no option accepts (a non-finite number), like
    /// the refusals of [`Options::normalized`]; `false`: not a value of the option's type.
    pub out_of_range: bool,
}

/// The options that `given` (rows with their raw values, in any order) select: the defaults
/// (AIMET's with `compat = aimet`), each given field replaced by its value. Not yet
/// [`Options::normalized`]: the caller decides when.
pub fn apply(given: &[(&'static Flag, Vec<String>)]) -> Result<Options, FlagError> {
    let compat = given
        .iter()
        .find(|(f, _)| f.field == "compat")
        .map(|(f, raw)| parse(f, raw))
        .transpose()?;
    let base = match compat.as_ref().and_then(Json::as_str) {
        Some("aimet") => Options::aimet(),
        _ => Options::default(),
    };
    let mut tree = serde_json::to_value(&base).map_err(|e| FlagError {
        field: "compat",
        message: e.to_string(),
        out_of_range: false,
    })?;
    for flag in FLAGS {
        let Some((_, raw)) = given.iter().find(|(f, _)| f.field == flag.field) else {
            continue;
        };
        let value = parse(flag, raw)?;
        let mut candidate = tree.clone();
        set(&mut candidate, flag.field, value);
        serde_json::from_value::<Options>(candidate.clone()).map_err(|e| FlagError {
            field: flag.field,
            message: invalid(flag, raw, &e.to_string()),
            out_of_range: false,
        })?;
        tree = candidate;
    }
    serde_json::from_value(tree).map_err(|e| FlagError {
        field: "",
        message: e.to_string(),
        out_of_range: false,
    })
}

fn invalid(flag: &Flag, raw: &[String], detail: &str) -> String {
    let shown = raw.join(",");
    match flag.choices() {
        Some(c) => format!(
            "invalid value `{shown}` (expected one of: {})",
            c.values.join(", ")
        ),
        None => format!("invalid value `{shown}` ({detail})"),
    }
}

fn boolean(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The JSON value of `raw` (every occurrence of the flag, in order) for `flag`.
fn parse(flag: &'static Flag, raw: &[String]) -> Result<Json, FlagError> {
    let fail = |message: String| FlagError {
        field: flag.field,
        message,
        out_of_range: false,
    };
    let last = raw.last().map(String::as_str).unwrap_or("");
    let pieces = || {
        raw.iter()
            .flat_map(|r| r.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let numbers = || {
        pieces()
            .map(|p| match p.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(n),
                Ok(_) => Err(FlagError {
                    out_of_range: true,
                    ..fail(format!("must be finite numbers, not `{p}`"))
                }),
                Err(_) => Err(fail(format!("must be numbers, not `{p}`"))),
            })
            .collect::<Result<Vec<f64>, _>>()
    };
    Ok(match flag.kind {
        Kind::Bool => {
            Json::Bool(boolean(last).ok_or_else(|| fail("must be true or false".into()))?)
        }
        Kind::Integer { .. } => {
            let t = last.trim();
            match (t.parse::<u64>(), t.parse::<i64>()) {
                (Ok(n), _) => Json::from(n),
                (_, Ok(n)) => Json::from(n),
                _ => return Err(fail(format!("must be a whole number, not `{last}`"))),
            }
        }
        Kind::Number { .. } => {
            let n: f64 = last
                .trim()
                .parse()
                .map_err(|_| fail(format!("must be a number, not `{last}`")))?;
            Json::Number(serde_json::Number::from_f64(n).ok_or_else(|| FlagError {
                out_of_range: true,
                ..fail(format!("must be a finite number, not `{last}`"))
            })?)
        }
        Kind::Enum(_) => Json::String(last.trim().replace('-', "_")),
        Kind::Steps => {
            let list: Vec<&str> = pieces().collect();
            if list == ["none"] {
                Json::Array(Vec::new())
            } else {
                let steps = list
                    .iter()
                    .map(|s| Step::parse(s).map(|s| Json::from(s.name())))
                    .collect::<crate::error::Result<Vec<_>>>()
                    .map_err(|e| fail(e.to_string()))?;
                Json::Array(steps)
            }
        }
        Kind::Strings => Json::Array(raw.iter().cloned().map(Json::String).collect()),
        Kind::Range => match numbers()?.as_slice() {
            [lo, hi] => Json::from(vec![*lo, *hi]),
            _ => return Err(fail("takes two numbers: lo,hi".into())),
        },
        Kind::Numbers => Json::from(numbers()?),
        Kind::Shapes => {
            let mut shapes = Map::new();
            for piece in pieces() {
                let (name, dims) = piece
                    .rsplit_once(':')
                    .ok_or_else(|| fail(format!("takes NAME:D0xD1x…, not `{piece}`")))?;
                let dims = dims
                    .split('x')
                    .map(|d| d.trim().parse::<u64>().map(Json::from))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        fail(format!(
                            "takes NAME:D0xD1x… with whole sizes, not `{piece}`"
                        ))
                    })?;
                shapes.insert(name.trim().to_string(), Json::Array(dims));
            }
            Json::Object(shapes)
        }
    })
}

/// Sets `value` at the dotted `path` of `tree`.
fn set(tree: &mut Json, path: &str, value: Json) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(key) = parts.next() {
        if !node.is_object() {
            *node = Json::Object(Map::new());
        }
        let Json::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(key.to_string(), value);
            return;
        }
        node = map.entry(key.to_string()).or_insert(Json::Null);
    }
}

/// The doc comment of the field at `path` in [`Options`], as the OpenAPI schema carries it (one
/// line per paragraph line, rustdoc links as written).
pub fn doc(path: &str) -> String {
    static SCHEMAS: OnceLock<(Json, BTreeMap<String, Json>)> = OnceLock::new();
    let (root, named) = SCHEMAS.get_or_init(|| {
        let mut found = Vec::new();
        Options::schemas(&mut found);
        let named = found
            .into_iter()
            .filter_map(|(n, s)| Some((n, serde_json::to_value(s).ok()?)))
            .collect();
        (
            serde_json::to_value(Options::schema()).unwrap_or_default(),
            named,
        )
    });
    let resolve = |s: &Json| -> Json {
        let target = s
            .get("$ref")
            .or_else(|| s.pointer("/oneOf/0/$ref"))
            .and_then(Json::as_str)
            .and_then(|r| r.rsplit('/').next())
            .and_then(|n| named.get(n));
        target.cloned().unwrap_or_else(|| s.clone())
    };
    let mut node = root.clone();
    let mut parts = path.split('.').peekable();
    while let Some(key) = parts.next() {
        let Some(prop) = node.pointer(&format!("/properties/{key}")).cloned() else {
            return String::new();
        };
        if parts.peek().is_none() {
            return prop
                .get("description")
                .or_else(|| prop.pointer("/oneOf/0/description"))
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
        }
        node = resolve(&prop);
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(pairs: &[(&str, &[&str])]) -> Vec<(&'static Flag, Vec<String>)> {
        pairs
            .iter()
            .map(|(field, raw)| {
                (
                    Flag::of(field).expect("a row"),
                    raw.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn every_row_names_a_documented_field_and_its_values_deserialize() {
        for f in FLAGS {
            assert!(!f.doc().is_empty(), "{}: no doc", f.field);
            assert!(f.query.is_some() || f.cli.is_some(), "{}", f.field);
            if let Some(c) = f.choices() {
                assert!(!c.values.is_empty(), "{}", f.field);
                for v in c.values {
                    apply(&given(&[(f.field, &[&v])])).expect(f.field);
                }
            }
        }
        let names: Vec<_> = FLAGS.iter().filter_map(|f| f.query).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "query names are unique");
    }

    #[test]
    fn values_land_on_their_fields() {
        let o = apply(&given(&[
            ("compat", &["aimet"]),
            ("steps", &["bn_fold,cls", "hbf"]),
            ("verify.enabled", &["false"]),
            ("verify.seed", &["7"]),
            ("target.weight_granularity", &["per-channel"]),
            ("exports.input_range", &["-1,1"]),
            ("deploy.input_mean", &["0.5,-0.5"]),
            ("start", &["a", "b"]),
            (
                "verify.input_shapes",
                &["x:1x3x48x320,mask:1x48", "ids:2x7"],
            ),
        ]))
        .unwrap();
        assert_eq!(o.compat, Compat::Aimet);
        assert_eq!(
            o.relu6,
            Relu6Policy::Replace,
            "compat=aimet starts from AIMET"
        );
        assert_eq!(o.steps, vec![Step::BnFold, Step::Cls, Step::Hbf]);
        assert!(!o.verify.enabled);
        assert_eq!(o.verify.seed, 7);
        assert_eq!(o.target.weight_granularity, Some(Granularity::PerChannel));
        assert_eq!(o.exports.input_range, Some([-1.0, 1.0]));
        assert_eq!(o.deploy.input_mean, Some(vec![0.5, -0.5]));
        assert_eq!(o.start, vec!["a", "b"]);
        let shapes: Vec<(&str, &[usize])> = o
            .verify
            .input_shapes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("ids", &[2, 7][..]),
                ("mask", &[1, 48][..]),
                ("x", &[1, 3, 48, 320][..])
            ]
        );
        assert_eq!(apply(&[]).unwrap(), Options::default());
        assert_eq!(apply(&given(&[("steps", &["none"])])).unwrap().steps, []);
    }

    #[test]
    fn bad_values_name_their_field() {
        for (field, raw) in [
            ("relu6", "sometimes"),
            ("iterations", "many"),
            ("target.weight_bits", "300"),
            ("verify.enabled", "perhaps"),
            ("exports.input_range", "1"),
            ("steps", "fold"),
            ("verify.input_shapes", "x=1,3"),
            ("verify.input_shapes", "x:1x3xh"),
        ] {
            let e = apply(&given(&[(field, &[raw])])).unwrap_err();
            assert_eq!(e.field, field, "{raw}: {}", e.message);
        }
    }
}
