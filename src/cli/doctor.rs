//! `pixgate doctor`: the interpreter, numpy, the transport a gateway gets, memfd and
//! descriptor limits, /dev/shm and huge pages.

use std::process::ExitCode;
use std::time::Duration;

use pixgate::{Gateway, Value};

pub(crate) fn run(spec: &str) -> pixgate::Result<ExitCode> {
    let mut ok = true;
    match Gateway::spawn(spec) {
        Ok(gw) => {
            let i = gw.info();
            println!("interpreter      {}", i.executable);
            println!("python           {}", i.python_version);
            match &i.numpy_version {
                Some(v) => println!("numpy            {v}"),
                None => {
                    println!("numpy            absent (needed for arrays: pip install numpy)");
                    ok = false;
                }
            }
            let probe =
                gw.remote_exec("import sys\nchannel.send((sys.platform, sys.maxsize > 2**32))")?;
            if let Ok(Value::Tuple(ref t)) = probe.receive_timeout(Duration::from_secs(10)) {
                println!("platform         {} (64-bit: {})", t[0], t[1]);
            }
            gw.exit(Duration::from_secs(5))?;
        }
        Err(e) => {
            println!("interpreter      unusable: {e}");
            ok = false;
        }
    }
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
