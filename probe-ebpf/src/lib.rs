//! Empty on purpose: `probe-user` lists this crate as a build-dependency so that cargo
//! rebuilds the embedded object when the programs change; the programs are the `probe` bin.
#![no_std]
