//! The node state reader: a state file damaged on disk (or written by
//! another version) gives an error, never a panic.
#![no_main]

use std::path::Path;

use cert_csi::store::VolumeState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = VolumeState::decode(Path::new("/var/lib/cert-csi/volumes/v/state.json"), data);
});
