//! Which proxy wrote a record (the audit `instance`): `--instance-id`, else
//! the ECS task ARN, else the host name. Worked out once, at start.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The variable the ECS agent sets in every container of a task: the base
/// URL of the task metadata endpoint, version 4.
pub(crate) const ECS_METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The whole ECS lookup (connect, request, response) gets this long; start-up
/// never waits longer for it.
const ECS_LOOKUP: Duration = Duration::from_secs(1);

/// A task metadata document is a few KiB; anything far larger is not one.
const MAX_METADATA: usize = 1024 * 1024;

/// The instance name: `flag` when given; else, when `ECS_CONTAINER_METADATA_URI_V4`
/// is set, the `TaskARN` of `GET $ECS_CONTAINER_METADATA_URI_V4/task`; else the
/// host name. A failed lookup logs one warning and falls back to the host name.
///
/// The request is made straight from the process, never through the proxy's
/// data path: the endpoint is link-local (169.254.170.2), an address the IP
/// guard keeps every client away from.
pub(crate) async fn identify(flag: Option<&str>) -> Arc<str> {
    if let Some(id) = flag.filter(|id| !id.is_empty()) {
        return id.into();
    }
    if let Some(base) = std::env::var_os(ECS_METADATA_ENV) {
        let base = base.to_string_lossy();
        let lookup = tokio::time::timeout(ECS_LOOKUP, ecs_task_arn(&base)).await;
        let error = match lookup {
            Ok(Ok(arn)) => return arn.into(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer within {}",
                humantime::format_duration(ECS_LOOKUP)
            ),
        };
        tracing::warn!(
            endpoint = %base,
            error,
            "ECS task metadata lookup failed; the audit instance is the host name"
        );
    }
    host_name()
}

/// The host name, or `unknown` when the system has none.
pub(crate) fn host_name() -> Arc<str> {
    let name = gethostname::gethostname();
    let name = name.to_string_lossy();
    if name.is_empty() {
        "unknown".into()
    } else {
        name.as_ref().into()
    }
}

/// Why the ECS task ARN could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EcsError {
    #[error("{ECS_METADATA_ENV} is not an http:// URL: {0:?}")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("cannot read the answer: {0}")]
    Body(String),
    #[error("the answer has no usable TaskARN: {0}")]
    NoArn(String),
}

/// `GET {base}/task` over plain HTTP/1.1, and its `TaskARN`.
pub(crate) async fn ecs_task_arn(base: &str) -> Result<String, EcsError> {
    let url = format!("{}/task", base.trim_end_matches('/'));
    let uri: Uri = url.parse().map_err(|_| EcsError::Url(base.to_string()))?;
    let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(EcsError::Url(base.to_string()));
    };
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(EcsError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(EcsError::Http)?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_string();
    let path = uri
        .path_and_query()
        .map_or("/task", |p| p.as_str())
        .to_string();
    let fetch = async move {
        let req = Request::get(path)
            .header(header::HOST, authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| EcsError::Url(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(EcsError::Http)?;
        if resp.status() != StatusCode::OK {
            return Err(EcsError::Status(resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_METADATA)
            .collect()
            .await
            .map_err(|e| EcsError::Body(e.to_string()))?
            .to_bytes();
        task_arn(&body)
        // `sender` is dropped here, which lets `connection` finish.
    };
    // The connection is driven right here, not by a task of its own.
    let (arn, _) = tokio::join!(fetch, connection);
    arn
}

/// The `TaskARN` of a task metadata document: one line of printable text.
fn task_arn(body: &[u8]) -> Result<String, EcsError> {
    #[derive(serde::Deserialize)]
    struct Task {
        #[serde(rename = "TaskARN")]
        task_arn: String,
    }
    let task: Task = serde_json::from_slice(body).map_err(|e| EcsError::NoArn(e.to_string()))?;
    let arn = task.task_arn;
    if arn.is_empty() || arn.len() > 2048 || arn.chars().any(char::is_control) {
        return Err(EcsError::NoArn(format!("{arn:?}")));
    }
    Ok(arn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_arn_is_read_from_the_task_document() {
        let doc = br#"{"Cluster":"default","TaskARN":"arn:aws:ecs:eu-west-1:123456789012:task/default/0123abcd","Family":"egress"}"#;
        assert_eq!(
            task_arn(doc).ok().as_deref(),
            Some("arn:aws:ecs:eu-west-1:123456789012:task/default/0123abcd")
        );
        for bad in [
            &br#"{"Cluster":"default"}"#[..],
            br#"{"TaskARN":""}"#,
            br#"{"TaskARN":"a\nb"}"#,
            b"<html>",
        ] {
            assert!(task_arn(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn the_flag_wins_and_the_host_name_is_the_fallback() {
        assert_eq!(&*identify(Some("edge-1")).await, "edge-1");
        assert!(!host_name().is_empty());
    }

    #[tokio::test]
    async fn only_http_urls_are_asked() {
        for base in ["https://169.254.170.2/v4/x", "not a url", "file:///etc"] {
            assert!(
                matches!(ecs_task_arn(base).await, Err(EcsError::Url(_))),
                "{base}"
            );
        }
    }
}
