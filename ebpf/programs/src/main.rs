//! nodeward's kernel programs.
//!
//! `nw_connect4`/`nw_connect6` (cgroup sock_addr) rewrite a pod's `connect()`
//! to a meshed destination so it lands on the node proxy, remembering the
//! original destination under the socket cookie. `nw_sockops` moves that
//! record under the connection's 4-tuple when the SYN leaves (the source port
//! is known by then and the proxy can compute the same key from `accept()`),
//! and deletes it when the socket closes so nothing leaks if the proxy never
//! reads it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("nodeward-ebpf only builds for bpfel-unknown-none; use `cargo xtask build`");
}
