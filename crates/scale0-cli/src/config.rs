//! `--config FILE`: a TOML file whose keys are the command's long flags.
//!
//! The file is turned into flags and parsed by clap together with the command line, so a
//! key means exactly what its flag means, takes the same values and is checked by the
//! same parser; a flag given on the command line wins over the key. Every key and value
//! is checked against the command before anything starts, and a bad one is reported with
//! the file, line and key. `scale0 config --default COMMAND` prints a file with every key,
//! its default and its help.

use anyhow::{Context, Result, anyhow};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, CommandFactory};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use toml::{Spanned, Value};

/// Flags of `scale0 config`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print a configuration file for this command with every key at its default,
    /// each with its help as a comment (keys without a default are commented out).
    #[arg(long, value_name = "COMMAND")]
    default: String,
}

/// Keys that are not options of the command itself.
const NOT_KEYS: [&str; 3] = ["help", "version", "config"];

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut cli = crate::Cli::command();
    cli.build();
    let command = cli
        .find_subcommand(&args.default)
        .filter(|c| !c.is_hide_set() && c.get_name() != "config")
        .ok_or_else(|| {
            let names: Vec<&str> = cli
                .get_subcommands()
                .filter(|c| !c.is_hide_set() && c.get_name() != "config")
                .map(clap::Command::get_name)
                .collect();
            anyhow!(
                "no command {:?}; one of: {}",
                args.default,
                names.join(", ")
            )
        })?;
    print!("{}", default_file(command));
    Ok(ExitCode::SUCCESS)
}

/// The commented default file of one subcommand.
fn default_file(command: &clap::Command) -> String {
    let mut out = format!(
        "# scale0 {name}: configuration (`scale0 {name} --config FILE`).\n\
         # Each key is a flag of `scale0 {name}` without its dashes; a flag given on the\n\
         # command line wins over its key. Commented keys have no default.\n",
        name = command.get_name()
    );
    for arg in options(command) {
        let Some(key) = arg.get_long() else { continue };
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        for line in wrap(&help, 86) {
            let _ = writeln!(out, "# {line}");
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("{key} = false"),
            ArgAction::Append => {
                let items: Vec<String> = defaults.iter().map(|v| toml_scalar(v)).collect();
                if items.is_empty() {
                    format!("# {key} = [\"{}\"]", value_name(arg))
                } else {
                    format!("{key} = [{}]", items.join(", "))
                }
            }
            _ => match defaults.first() {
                Some(v) => format!("{key} = {}", toml_scalar(v)),
                None => format!("# {key} = \"{}\"", value_name(arg)),
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `text` in lines of at most `width` characters (a longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|n| n.first())
        .map_or_else(|| "VALUE".to_string(), ToString::to_string)
}

/// A default as TOML: numbers and booleans bare, anything else a quoted string.
fn toml_scalar(v: &str) -> String {
    if v.parse::<i64>().is_ok()
        || v.parse::<f64>().is_ok_and(f64::is_finite)
        || v == "true"
        || v == "false"
    {
        v.to_string()
    } else {
        Value::String(v.to_string()).to_string()
    }
}

/// The options of a subcommand a file may set.
fn options(command: &clap::Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| {
        !a.is_positional()
            && !a.is_hide_set()
            && !a.is_global_set()
            && a.get_long().is_some_and(|l| !NOT_KEYS.contains(&l))
    })
}

/// The command line with the keys of `--config FILE` (if given) in it as flags, for the
/// subcommand `argv` names. Flags already on the command line keep their values.
pub(crate) fn merge(argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut cli = crate::Cli::command();
    cli.build();
    // A command line clap rejects (or answers, as --help) is dealt with by the real
    // parse that follows; the file is still checked, so `--config F --help` vets F.
    let Ok(matches) = cli.clone().try_get_matches_from(argv.iter()) else {
        let sub = argv
            .iter()
            .skip(1)
            .find_map(|a| cli.find_subcommand(a.to_str()?));
        let file = argv
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| argv.get(i + 1));
        if let (Some(sub), Some(file)) = (sub, file) {
            file_flags(Path::new(file), sub, |_| false)?;
        }
        return Ok(argv);
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(path) = sub.get_one::<std::path::PathBuf>("config") else {
        return Ok(argv);
    };
    let command = cli
        .find_subcommand(name)
        .ok_or_else(|| anyhow!("no subcommand {name}"))?;
    let given = |id: &str| sub.value_source(id) == Some(ValueSource::CommandLine);
    let flags = file_flags(path, command, given)?;
    // The subcommand is the first argument equal to its name: only value-less global flags
    // can come before it.
    let at = argv
        .iter()
        .skip(1)
        .position(|a| a == OsStr::new(name))
        .map_or(argv.len(), |i| i + 2);
    let mut merged = argv[..at].to_vec();
    merged.extend(flags);
    merged.extend_from_slice(&argv[at..]);
    Ok(merged)
}

/// The flags a configuration file stands for, every value checked by its flag's parser.
fn file_flags(
    path: &Path,
    command: &clap::Command,
    given: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let at = |offset: usize| format!("{}:{}", path.display(), line_of(&text, offset));
    let table: BTreeMap<Spanned<String>, Spanned<Value>> = toml::from_str(&text).map_err(|e| {
        let place = e
            .span()
            .map_or_else(|| path.display().to_string(), |s| at(s.start));
        anyhow!("{place}: not valid TOML: {}", e.message())
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let name = key.get_ref().replace('_', "-");
        let place = at(key.span().start);
        let arg = options(command)
            .find(|a| a.get_long() == Some(name.as_str()))
            .ok_or_else(|| {
                anyhow!(
                    "{place}: unknown key `{}` for `scale0 {}` (`scale0 config --default {}` lists them)",
                    key.get_ref(),
                    command.get_name(),
                    command.get_name()
                )
            })?;
        let values = values(arg, value.get_ref())
            .and_then(|vs| {
                for v in &vs {
                    check(arg, v)?;
                }
                Ok(vs)
            })
            .map_err(|why| anyhow!("{}: key `{}`: {why}", at(value.span().start), key.get_ref()))?;
        if given(arg.get_id().as_str()) {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => {
                if values.first().is_some_and(|v| v == "true") {
                    flags.push(format!("--{name}").into());
                }
            }
            _ => {
                for v in values {
                    flags.push(format!("--{name}={v}").into());
                }
            }
        }
    }
    Ok(flags)
}

/// A TOML value as the strings its flag would take.
fn values(arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let many = matches!(arg.get_action(), ArgAction::Append);
    let flag = matches!(arg.get_action(), ArgAction::SetTrue);
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Datetime(d) => Ok(d.to_string()),
        Value::Array(_) | Value::Table(_) => Err("expected a single value".to_string()),
    };
    match value {
        Value::Boolean(b) if flag => Ok(vec![b.to_string()]),
        _ if flag => Err("expected true or false".to_string()),
        Value::Array(items) if many => items.iter().map(scalar).collect(),
        Value::Table(_) => Err("expected a value, not a table".to_string()),
        v if many => Ok(vec![scalar(v)?]),
        Value::Array(_) => Err("expected a single value, not a list".to_string()),
        v => Ok(vec![scalar(v)?]),
    }
}

/// Runs `v` through the parser of `arg`'s flag, alone (the flag's ties to other flags
/// are checked when the merged command line is parsed).
fn check(arg: &Arg, v: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Ok(());
    }
    let alone = Arg::new("value")
        .long("value")
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Set);
    clap::Command::new("check")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([format!("--value={v}")])
        .map(drop)
        .map_err(|e| why_invalid(&e, v))
}

/// What a clap value error says about the value, without the stand-in flag's name.
fn why_invalid(e: &clap::Error, v: &str) -> String {
    let text = e.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let detail = first.split_once("': ").map_or("not accepted", |(_, d)| d);
    let mut out = format!("invalid value {v:?}: {detail}");
    for extra in lines.filter(|l| l.contains("possible values")) {
        out.push(' ');
        out.push_str(extra.trim());
    }
    out
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
