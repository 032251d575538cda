#![no_std]
//! The XDP program is the binary target (main.rs); this empty library lets userspace name the
//! crate as a build dependency, which is how aya-build finds it.
