//! cert-csi beside the programs it replaces, on the real control plane:
//! upstream cert-manager csi-driver (`.tools/bin/csi-driver`) and
//! cert-manager's own controller loops (`.tools/bin/cert-manager-
//! controller`), both built by `hack/build-tools`. The same kubelet calls go
//! to both drivers and outside tools compare what each made; any difference
//! not listed as intentional (README, "Intentional differences") fails.

mod differential;
mod interop;
mod matrix;
mod renewal;
mod token_request;
mod view;
