//! The `grpc` probe: the standard health service (`grpc.health.v1.Health/Check`) must answer
//! SERVING.
//!
//! Inputs: `address` (host:port, or a URI), `service` ("" = the server). Output: the serving
//! status's name.

use std::time::Duration;

use serde_json::{Value, json};

use super::s;
use crate::Probe;

pub(super) fn grpc(p: &Value, timeout: Duration) -> Probe {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Some(address) = s(p, "address") else {
        return Probe::fail(Value::Null, "grpc check without an address");
    };
    let service = s(p, "service").unwrap_or("").to_string();
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Probe::fail(Value::Null, format!("cannot start a runtime: {e}")),
    };
    let result: Result<i32, String> = rt.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(|e| format!("grpc.health.v1.Health/Check: {}", e.message()))?;
        Ok(reply.into_inner().status)
    });
    match result {
        Ok(status) => {
            let name = ServingStatus::try_from(status)
                .map_or("UNKNOWN".to_string(), |s| s.as_str_name().to_string());
            if status == ServingStatus::Serving as i32 {
                Probe::pass(json!(name), format!("{address} reports SERVING"))
            } else {
                Probe::fail(json!(name), format!("{address} reports {name}"))
            }
        }
        Err(e) => Probe::fail(Value::Null, e.clone()).with(json!({"error": e})),
    }
}
