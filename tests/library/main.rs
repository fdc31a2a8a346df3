//! Library pieces judged by outside tools: keys, CSRs and keystores by
//! `openssl` and `keytool`; metrics, health endpoints, Events and logs.

mod pki_openssl;
mod telemetry;
