//! ssh gateways against a server of the tests' own (tests/common: `Sshd`): the channel
//! and array batteries run over ssh (the modules below are tests/channels.rs and
//! tests/arrays.rs, whose gateways come from `common::spec`, which points at the test
//! sshd in this binary), and what is particular to ssh.

mod common;

#[path = "channels.rs"]
mod channels;

#[path = "arrays.rs"]
mod arrays;

use std::time::{Duration, Instant};

use common::{T, sshd, sshd_available};
use pixgate::{ErrorKind, Gateway, OutputMode, SharedArray, Value};

fn gw(extra: &str) -> Gateway {
    Gateway::builder(&sshd().spec(extra))
        .output(OutputMode::Capture)
        .handshake_timeout(T)
        .spawn()
        .expect("ssh gateway")
}

#[test]
fn a_round_trip_over_ssh() {
    if !sshd_available() {
        return;
    }
    let g = gw("");
    assert_eq!(g.transport(), pixgate::segment::Transport::ByValue);
    let ch = g.remote_exec("channel.send(channel.receive() * 2)").unwrap();
    ch.send(21).unwrap();
    assert_eq!(ch.receive_timeout(T).unwrap(), Value::from(42));
}

#[test]
fn debug_remote_numpy() {
    let g = gw("");
    let ch = g.remote_exec("import sys, os; channel.send((sys.argv, sys.orig_argv, dict(os.environ)))").unwrap();
    eprintln!("{:?}", ch.receive_timeout(T).unwrap());
}
