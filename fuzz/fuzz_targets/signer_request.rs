//! What the signer reads from any user who may create a
//! CertificateRequest: the object itself (as JSON from the API), its
//! signing parameters, and the CSR under cert-manager's request rules.
#![no_main]

use cert_csi::api::CertificateRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<CertificateRequest>(data) {
        let _ = cert_csi::controller::signer::sign_params(&request);
        let _ = cert_csi::pki::check_request(request.spec.request.as_bytes(), &[], false);
    }
    // The CSR bytes alone, PEM or not.
    let _ = cert_csi::pki::check_request(data, &[], false);
    let _ = cert_csi::pki::check_request(data, &[], true);
});
