//! Gateway specs in execnet's syntax: `popen//python=PATH//chdir=DIR//env:NAME=VALUE//id=NAME`
//! for a local worker, `ssh=[ssh options] user@host//python=…//chdir=…//env:K=V` for one
//! on another machine.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};
use crate::segment::Transport;

/// Where the worker gets the helper package from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HelperSource {
    /// The host sends the helper's source over the protocol pipe (the default): the
    /// worker needs only a Python interpreter.
    #[default]
    Bootstrap,
    /// The worker imports the `pixgate` package installed in its environment.
    Installed,
}

/// A parsed gateway spec.
///
/// Keys (execnet's, plus `helper`):
///
/// | key | meaning |
/// |---|---|
/// | `popen` | start a local worker process |
/// | `ssh=[OPTIONS] HOST` | start a worker on `HOST` through `ssh` (options split on whitespace, as execnet does; arrays travel by value) |
/// | `ssh_config=FILE` | ssh client configuration file (`ssh -F FILE`) |
/// | `python=CMD` | interpreter command, split on whitespace (`python=python3 -X dev`); default `$PIXGATE_PYTHON` or `python3` locally, `python3` over ssh |
/// | `chdir=DIR` | working directory of the worker |
/// | `env:NAME=VALUE` | environment variable for the worker (repeatable) |
/// | `id=NAME` | gateway id, used to prefix output and in errors |
/// | `nice=N` | niceness increment of the worker |
/// | `dont_write_bytecode` | run the worker with `-B` |
/// | `helper=bootstrap\|installed` | where the helper package comes from |
/// | `transport=anonymous\|named\|by-value` | how arrays reach the worker (default: [`Transport::from_env`]; always by value over ssh) |
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// Interpreter command and its arguments; empty means the default interpreter.
    pub python: Vec<String>,
    /// Working directory of the worker.
    pub chdir: Option<PathBuf>,
    /// Extra environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Gateway id; a fresh `gwN` when absent.
    pub id: Option<String>,
    /// Niceness increment.
    pub nice: Option<i32>,
    /// Run the interpreter with `-B`.
    pub dont_write_bytecode: bool,
    /// Where the helper package comes from.
    pub helper: HelperSource,
    /// How arrays reach the worker; None for the process's default.
    pub transport: Option<Transport>,
    /// For an ssh gateway: the words of `ssh=` (options, then the destination).
    pub ssh: Option<Vec<String>>,
    /// For an ssh gateway: the client configuration file (`ssh_config=`, `ssh -F`).
    pub ssh_config: Option<PathBuf>,
}

impl Spec {
    /// True for a worker on another machine, reached through `ssh`.
    pub fn is_ssh(&self) -> bool {
        self.ssh.is_some()
    }
}

impl Spec {
    /// Parses a spec string.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Spec`] for an unknown key, a missing or malformed value, a repeated
    /// key, a transport other than `popen` and `ssh`, or both of them.
    pub fn parse(spec: &str) -> Result<Spec> {
        let err = |reason: String| {
            Error::new(ErrorKind::Spec {
                spec: spec.to_string(),
                reason,
            })
        };
        let mut out = Spec::default();
        let mut transport: Option<&str> = None;
        let mut seen: Vec<&str> = Vec::new();
        for part in spec.split("//") {
            if part.is_empty() {
                continue;
            }
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part, None),
            };
            if let Some(name) = key.strip_prefix("env:") {
                if name.is_empty() || name.contains('\0') {
                    return Err(err(format!("bad environment variable name {name:?}")));
                }
                let v = value.ok_or_else(|| err(format!("env:{name} needs a value")))?;
                if v.contains('\0') {
                    return Err(err(format!("env:{name} value contains a NUL byte")));
                }
                out.env.push((name.to_string(), v.to_string()));
                continue;
            }
            if seen.contains(&key) {
                return Err(err(format!("key {key:?} given twice")));
            }
            seen.push(key);
            fn need<'a>(
                v: Option<&'a str>,
                key: &str,
                err: impl Fn(String) -> Error,
            ) -> Result<&'a str> {
                v.filter(|v| !v.is_empty())
                    .ok_or_else(|| err(format!("key {key:?} needs a value")))
            }
            match key {
                "popen" => {
                    if value.is_some() {
                        return Err(err("popen takes no value".into()));
                    }
                    if transport.replace("popen").is_some() {
                        return Err(err("popen and ssh exclude each other".into()));
                    }
                }
                "ssh" => {
                    let words: Vec<String> = need(value, key, err)?
                        .split_whitespace()
                        .map(str::to_string)
                        .collect();
                    match words.last() {
                        Some(host) if !host.starts_with('-') => {}
                        _ => return Err(err("ssh= must end with the destination host".into())),
                    }
                    if transport.replace("ssh").is_some() {
                        return Err(err("popen and ssh exclude each other".into()));
                    }
                    out.ssh = Some(words);
                }
                "ssh_config" => out.ssh_config = Some(PathBuf::from(need(value, key, err)?)),
                "socket" | "vagrant_ssh" => {
                    return Err(err(format!(
                        "{key} gateways are not supported; popen and ssh are"
                    )));
                }
                "python" => {
                    let v = need(value, key, err)?;
                    out.python = v.split_whitespace().map(str::to_string).collect();
                }
                "chdir" => out.chdir = Some(PathBuf::from(need(value, key, err)?)),
                "id" => {
                    let v = need(value, key, err)?;
                    if v.chars().any(|c| c.is_control()) {
                        return Err(err("id contains control characters".into()));
                    }
                    out.id = Some(v.to_string());
                }
                "nice" => {
                    let v = need(value, key, err)?;
                    out.nice = Some(
                        v.parse()
                            .map_err(|_| err(format!("nice={v:?} is not an integer")))?,
                    );
                }
                "dont_write_bytecode" => {
                    if value.is_some() {
                        return Err(err("dont_write_bytecode takes no value".into()));
                    }
                    out.dont_write_bytecode = true;
                }
                "helper" => {
                    out.helper = match need(value, key, err)? {
                        "bootstrap" => HelperSource::Bootstrap,
                        "installed" => HelperSource::Installed,
                        other => {
                            return Err(err(format!(
                                "helper={other:?}: expected bootstrap or installed"
                            )));
                        }
                    }
                }
                "transport" => {
                    let v = need(value, key, err)?;
                    out.transport = Some(Transport::parse(v).ok_or_else(|| {
                        err(format!(
                            "transport={v:?}: expected anonymous, named or by-value"
                        ))
                    })?);
                }
                "execmodel" => match need(value, key, err)? {
                    "thread" => {}
                    other => {
                        return Err(err(format!(
                            "execmodel={other:?}: only thread is supported"
                        )));
                    }
                },
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        if transport.is_none() && !spec.trim().is_empty() {
            return Err(err(
                "no transport: the spec must contain popen or ssh".into()
            ));
        }
        if out.ssh_config.is_some() && out.ssh.is_none() {
            return Err(err("ssh_config is for ssh gateways".into()));
        }
        if out.ssh.is_some() {
            // No shared memory with another machine: whatever was asked, by value.
            match out.transport {
                None | Some(Transport::ByValue) => out.transport = Some(Transport::ByValue),
                Some(t) => {
                    return Err(err(format!(
                        "transport={t} needs shared memory; an ssh gateway passes arrays \
                         by value"
                    )));
                }
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for Spec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Spec> {
        Spec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let s = Spec::parse(
            "popen//python=/usr/bin/python3 -X dev//chdir=/tmp//env:A=1//env:B=x=y//id=cam//nice=5//dont_write_bytecode//helper=installed//execmodel=thread",
        )
        .unwrap();
        assert_eq!(s.python, ["/usr/bin/python3", "-X", "dev"]);
        assert_eq!(s.chdir, Some(PathBuf::from("/tmp")));
        assert_eq!(
            s.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(s.id.as_deref(), Some("cam"));
        assert_eq!(s.nice, Some(5));
        assert!(s.dont_write_bytecode);
        assert_eq!(s.helper, HelperSource::Installed);
    }

    #[test]
    fn parses_execnets_ssh_form() {
        let s = Spec::parse(
            "ssh=-p 2222 -i /k/id  root@127.0.0.1//ssh_config=/k/cfg//python=python3.11//chdir=/srv//env:A=1//nice=5",
        )
        .unwrap();
        assert!(s.is_ssh());
        assert_eq!(
            s.ssh.as_deref().unwrap(),
            ["-p", "2222", "-i", "/k/id", "root@127.0.0.1"]
        );
        assert_eq!(s.ssh_config, Some(PathBuf::from("/k/cfg")));
        assert_eq!(s.python, ["python3.11"]);
        assert_eq!(s.chdir, Some(PathBuf::from("/srv")));
        assert_eq!(s.env, [("A".into(), "1".into())]);
        assert_eq!(s.nice, Some(5));
        assert_eq!(s.transport, Some(Transport::ByValue));
        assert_eq!(Spec::parse("ssh=host").unwrap().ssh.unwrap(), ["host"]);
    }

    #[test]
    fn empty_spec_and_bare_popen_mean_defaults() {
        assert_eq!(Spec::parse("").unwrap(), Spec::default());
        assert_eq!(Spec::parse("popen").unwrap(), Spec::default());
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (spec, needle) in [
            ("popen//frobnicate=1", "unknown key"),
            ("socket=host:8888", "not supported"),
            ("popen//ssh=host", "exclude each other"),
            ("ssh=-v", "destination host"),
            ("ssh=host//transport=named", "by value"),
            ("popen//ssh_config=/x", "for ssh gateways"),
            ("popen//python=", "needs a value"),
            ("popen//nice=high", "not an integer"),
            ("popen//id=a//id=b", "given twice"),
            ("python=python3", "no transport"),
            ("popen//helper=pip", "expected bootstrap or installed"),
            ("popen//env:=1", "bad environment variable"),
            ("popen//env:A", "needs a value"),
            ("popen//execmodel=eventlet", "only thread"),
        ] {
            let e = Spec::parse(spec).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Spec { .. }), "{spec}: {e:?}");
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
    }
}
