//! `pixgate doctor`: the interpreter, numpy, the transport a gateway gets, memfd and
//! descriptor limits, /dev/shm and huge pages.

use std::process::ExitCode;
use std::time::Duration;

use pixgate::segment::{self, AnonymousSupport, Transport};
use pixgate::{Gateway, Value};

/// What the worker tells about itself: platform, word size, and whether it can pass
/// descriptors (`socket.send_fds`, CPython 3.9 on): `python-helper/remote/doctor_probe.py`,
/// sent without its final newline.
const WORKER_PROBE: &str =
    include_str!("../../python-helper/remote/doctor_probe.py").trim_ascii_end();

/// The worker's answer to [`WORKER_PROBE`].
#[derive(Clone, Debug, PartialEq)]
struct Worker {
    platform: String,
    bits64: bool,
    python: String,
    at_least_3_9: bool,
    send_fds: bool,
    implementation: String,
}

impl Worker {
    fn from_value(v: &Value, python: &str) -> Option<Worker> {
        let Value::Tuple(t) = v else {
            return None;
        };
        Some(Worker {
            platform: t.first()?.as_str()?.to_string(),
            bits64: t.get(1)?.as_bool()?,
            python: python.to_string(),
            at_least_3_9: t.get(2)?.as_bool()?,
            send_fds: t.get(3)?.as_bool()?,
            implementation: t.get(4)?.as_str()?.to_string(),
        })
    }
}

/// What decides a gateway's transport (`GatewayBuilder::transport`): the spec's
/// `transport=`, else `PIXGATE_TRANSPORT`, else the platform's default; and anonymous
/// only when the worker offers descriptors in its handshake.
#[derive(Clone, Debug)]
struct Why {
    spec: Option<Transport>,
    env: Option<String>,
    /// `Transport::from_env()`: `PIXGATE_TRANSPORT` when valid, else the platform's.
    default: Transport,
    worker: Option<Worker>,
    helper: String,
}

impl Why {
    /// The transport the gateway got and the reason, in a line.
    fn explain(&self, got: Transport) -> String {
        let asked = match (self.spec, self.env.as_deref().and_then(Transport::parse)) {
            (Some(t), _) => format!("transport={t} in the spec"),
            (None, Some(t)) => format!("PIXGATE_TRANSPORT={t}"),
            (None, None) => "the default on this platform".to_string(),
        };
        let wanted = self.spec.unwrap_or(self.default);
        match got {
            Transport::Anonymous if cfg!(target_os = "linux") => {
                format!("anonymous: memfd with sealing, descriptors passed on fd 5 ({asked})")
            }
            Transport::Anonymous => format!(
                "anonymous: shared-memory objects unlinked at creation, descriptors passed \
                 on fd 5 ({asked})"
            ),
            Transport::Named if wanted == Transport::Named => format!("named: {asked}"),
            Transport::Named => format!("named: {}", self.why_no_descriptors()),
            Transport::ByValue => format!("by value: pixels copied over the pipe ({asked})"),
        }
    }

    /// Why a worker asked for the anonymous transport did not take it.
    fn why_no_descriptors(&self) -> String {
        let Some(w) = &self.worker else {
            return "the worker did not offer descriptors in its handshake".to_string();
        };
        if w.platform != "linux" && w.platform != "darwin" {
            format!(
                "the worker cannot pass descriptors (platform {}, not Linux or macOS)",
                w.platform
            )
        } else if !w.at_least_3_9 {
            format!(
                "the worker cannot pass descriptors (Python {} < 3.9)",
                w.python
            )
        } else if !w.send_fds {
            format!(
                "the worker cannot pass descriptors ({} {} has no socket.send_fds)",
                w.implementation, w.python
            )
        } else {
            format!(
                "the worker's helper ({}) did not offer descriptors in its handshake",
                self.helper
            )
        }
    }

    /// A `PIXGATE_TRANSPORT` that is set to something it does not understand.
    fn env_warning(&self) -> Option<String> {
        let value = self.env.as_deref()?;
        Transport::parse(value)
            .is_none()
            .then(|| format!("PIXGATE_TRANSPORT={value:?} is neither anonymous nor named; ignored"))
    }
}

/// The memfd line: whether sealed memfds work here, and `MFD_NOEXEC_SEAL`.
fn memfd_text(support: AnonymousSupport) -> String {
    if !support.memfd {
        return "none on this platform: anonymous segments are shared-memory objects \
                unlinked at creation, which cannot be sealed"
            .to_string();
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!(" (kernel {})", r.trim()))
        .unwrap_or_default();
    let noexec = if support.noexec_seal {
        "MFD_NOEXEC_SEAL accepted"
    } else {
        "MFD_NOEXEC_SEAL refused (before Linux 6.3): objects are made without it"
    };
    format!("memfd_create with sealing works{kernel}; {noexec}")
}

/// The descriptors line: `RLIMIT_NOFILE`, which bounds the live anonymous arrays.
fn descriptors_text() -> String {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    // The type of rlim_t differs between platforms (u64 on Linux).
    #[allow(clippy::unnecessary_cast)]
    let limit = |n: u64| {
        if n == RLIM_INFINITY as u64 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    match getrlimit(Resource::RLIMIT_NOFILE) {
        // The field types differ between platforms.
        #[allow(clippy::unnecessary_cast)]
        Ok((soft, hard)) => {
            let (soft, hard) = (soft as u64, hard as u64);
            let mut text = format!(
                "RLIMIT_NOFILE soft {}, hard {}: the host holds one descriptor per live \
                 anonymous array (and one per pool size class, and at most {} made ahead \
                 for first shares)",
                limit(soft),
                limit(hard),
                pixgate::segment::PREPARED_READ_ONLY_MAX
            );
            if soft < 4096 {
                let remedy = if hard > soft {
                    format!(
                        "raise the soft limit (ulimit -n {})",
                        limit(hard.min(1 << 20))
                    )
                } else {
                    "the hard limit is as low: raise it (limits.conf, systemd LimitNOFILE)"
                        .to_string()
                };
                text.push_str(&format!(
                    "\n                 warning: fewer than {soft} anonymous arrays can be \
                     alive at once; {remedy}, or use the named transport"
                ));
            }
            text
        }
        Err(e) => format!("RLIMIT_NOFILE unknown: {e}"),
    }
}

pub(crate) fn run(spec: &str) -> pixgate::Result<ExitCode> {
    let mut ok = true;
    let progress = crate::progress::spinner(format!("starting a worker of {spec}"));
    let spawned = Gateway::builder(spec)
        .output(crate::progress::worker_output(&progress))
        .spawn();
    progress.finish_and_clear();
    match spawned {
        Ok(gw) => {
            let i = gw.info();
            println!("interpreter      {}", i.executable);
            println!("python           {}", i.interpreter());
            match &i.numpy_version {
                Some(v) => println!("numpy            {v}"),
                None if i.implementation == "jython" => {
                    println!("numpy            absent (arrays travel as Java NIO buffers)")
                }
                None => {
                    println!(
                        "numpy            absent (needed for arrays: {} -m pip install numpy)",
                        i.executable
                    );
                    ok = false;
                }
            }
            let progress = crate::progress::spinner("asking the worker about its platform");
            let probe = gw.remote_exec(WORKER_PROBE)?;
            let worker = match probe.receive_timeout(Duration::from_secs(10)) {
                Ok(v) => Worker::from_value(&v, &i.python_version),
                Err(_) => None,
            };
            progress.finish_and_clear();
            if let Some(w) = &worker {
                println!("platform         {} (64-bit: {})", w.platform, w.bits64);
            }
            let why = Why {
                spec: pixgate::Spec::parse(spec).ok().and_then(|s| s.transport),
                env: std::env::var("PIXGATE_TRANSPORT").ok(),
                default: Transport::from_env(),
                worker,
                helper: i.helper_version.clone(),
            };
            println!("transport        {}", why.explain(gw.transport()));
            if let Some(warning) = why.env_warning() {
                println!("                 warning: {warning}");
            }
            gw.exit(Duration::from_secs(5))?;
        }
        Err(e) => {
            println!("interpreter      unusable: {e}");
            println!("transport        unknown: no gateway started");
            ok = false;
        }
    }
    match segment::probe_anonymous() {
        Ok(support) => println!("memfd            {}", memfd_text(support)),
        Err(e) => {
            println!("memfd            unusable: {e}");
            // The default transport cannot work without it.
            ok &= Transport::from_env() != Transport::Anonymous;
        }
    }
    println!("descriptors      {}", descriptors_text());
    match nix::sys::statvfs::statvfs("/dev/shm") {
        // The field types differ between platforms (u64 on Linux, u32 on macOS).
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => {
            let frag = s.fragment_size() as u64;
            let total = s.blocks() as u64 * frag;
            let free = s.blocks_available() as u64 * frag;
            println!(
                "/dev/shm         {} total, {} free",
                human(total),
                human(free)
            );
            if total < 1 << 30 {
                println!("                 warning: under 1 GiB; large stacks will not fit");
            }
        }
        Err(e) => {
            println!("/dev/shm         unavailable: {e}");
            ok = false;
        }
    }
    println!("huge pages       {}", huge_pages());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn human(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn huge_pages() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let shm_huge = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)?
                .split(',')
                .find(|o| o.starts_with("huge="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "huge=never".to_string());
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unavailable".to_string());
    format!(
        "HugePages_Total {} (size {} kB); /dev/shm mounted {}; shmem THP: {}",
        field("HugePages_Total:"),
        field("Hugepagesize:"),
        shm_huge,
        thp
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(platform: &str, python: &str, at_least_3_9: bool, send_fds: bool) -> Worker {
        Worker {
            platform: platform.to_string(),
            bits64: true,
            python: python.to_string(),
            at_least_3_9,
            send_fds,
            implementation: "cpython".to_string(),
        }
    }

    #[test]
    fn the_transport_line_says_why() {
        let linux = Some(worker("linux", "3.12.1", true, true));
        let why = |spec, env: Option<&str>, default, worker: Option<Worker>| Why {
            spec,
            env: env.map(str::to_string),
            default,
            worker,
            helper: "0.9.0".to_string(),
        };
        use Transport::{Anonymous as A, Named as N};
        for (why, got, line) in [
            (
                why(None, None, A, linux.clone()),
                A,
                "memfd with sealing, descriptors passed on fd 5 (the default on this platform)",
            ),
            (
                why(Some(A), Some("named"), N, linux.clone()),
                A,
                "descriptors passed on fd 5 (transport=anonymous in the spec)",
            ),
            (
                why(None, Some("named"), N, linux.clone()),
                N,
                "named: PIXGATE_TRANSPORT=named",
            ),
            (
                why(Some(N), None, A, linux.clone()),
                N,
                "named: transport=named in the spec",
            ),
            (
                why(None, None, A, Some(worker("linux", "3.8.18", false, false))),
                N,
                "named: the worker cannot pass descriptors (Python 3.8.18 < 3.9)",
            ),
            (
                why(None, None, A, Some(worker("win32", "3.12.1", true, true))),
                N,
                "named: the worker cannot pass descriptors (platform win32, not Linux or macOS)",
            ),
            (
                why(None, None, A, Some(worker("linux", "3.10.1", true, false))),
                N,
                "named: the worker cannot pass descriptors (cpython 3.10.1 has no socket.send_fds)",
            ),
            (
                why(None, None, A, linux.clone()),
                N,
                "named: the worker's helper (0.9.0) did not offer descriptors in its handshake",
            ),
            (
                why(None, None, A, None),
                N,
                "named: the worker did not offer descriptors in its handshake",
            ),
        ] {
            let text = why.explain(got);
            assert!(text.ends_with(line), "{text:?} should end with {line:?}");
            assert!(text.starts_with(got.as_str()), "{text}");
        }
        let bogus = why(None, Some("memfd"), A, None);
        assert_eq!(
            bogus.env_warning().as_deref(),
            Some("PIXGATE_TRANSPORT=\"memfd\" is neither anonymous nor named; ignored")
        );
        assert_eq!(why(None, Some("named"), N, None).env_warning(), None);
    }

    #[test]
    fn the_worker_probe_is_read_from_its_tuple() {
        let v = Value::Tuple(vec![
            Value::Str("linux".into()),
            Value::Bool(true),
            Value::Bool(true),
            Value::Bool(false),
            Value::Str("pypy".into()),
        ]);
        assert_eq!(
            Worker::from_value(&v, "3.9.18"),
            Some(Worker {
                platform: "linux".into(),
                bits64: true,
                python: "3.9.18".into(),
                at_least_3_9: true,
                send_fds: false,
                implementation: "pypy".into(),
            })
        );
        assert_eq!(Worker::from_value(&Value::Tuple(vec![]), "3.9"), None);
        assert_eq!(Worker::from_value(&Value::None, "3.9"), None);
    }
}
