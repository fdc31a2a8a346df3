//! The node state readers: a state file damaged on disk (or written by
//! another version), or a csi-driver metadata.json found when taking a node
//! over, gives an error, never a panic.
#![no_main]

use std::path::Path;

use cert_csi::store::VolumeState;
use cert_csi::store::csi_driver::Metadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = VolumeState::decode(Path::new("/var/lib/cert-csi/volumes/v/state.json"), data);
    let _ = Metadata::decode(
        Path::new("/tmp/cert-manager-csi-driver/inmemfs/v/metadata.json"),
        data,
    );
});
