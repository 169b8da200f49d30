//! Client identity on the shared service: proxy tokens in `Proxy-Authorization`
//! ([`tokens`]) and client certificates on `--listen-tls`.

mod mtls;
mod tokens;
