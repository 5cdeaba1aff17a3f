//! The gRPC write API: workers' writes arrive here and go through the same [`EventWriter`] as
//! `main`'s own client endpoints.

use ganglion_core::EventTemplate;
use ganglion_rpc::v1::{
    AckToDeviceRequest, AckToDeviceResponse, PduOutcome, PduResult, ReceivePdusRequest, ReceivePdusResponse,
    RemovePusherRequest, RemovePusherResponse, SendEventRequest, SendEventResponse, ServerInfoRequest,
    ServerInfoResponse, SetPresenceRequest, SetPresenceResponse,
};
use ganglion_rpc::{REQUEST_ID_METADATA, WriteApi, WriteApiServer};
use ruma::{OwnedRoomId, OwnedUserId};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::MainState;
use crate::writer::{WriteError, WriteOrigin};

/// Serves [`WriteApi`] from `main`'s state.
#[derive(Debug, Clone)]
pub struct WriteApiService {
    state: MainState,
}

/// The tonic service for `main`'s gRPC listener.
pub fn write_api_service(state: MainState) -> WriteApiServer<WriteApiService> {
    WriteApiServer::new(WriteApiService { state })
}

fn status(e: WriteError) -> Status {
    match e {
        WriteError::UnknownRoom => Status::not_found("unknown room"),
        WriteError::Forbidden(r) => Status::permission_denied(r),
        WriteError::TooLarge => Status::invalid_argument("event too large"),
        WriteError::Invalid(r) => Status::invalid_argument(r),
        WriteError::UnsupportedVersion(v) => Status::invalid_argument(format!("unsupported room version {v}")),
        WriteError::Storage(s) => {
            tracing::error!(error = %s, "storage failure in write api");
            Status::internal("storage failure")
        }
    }
}

#[tonic::async_trait]
impl WriteApi for WriteApiService {
    async fn server_info(&self, _req: Request<ServerInfoRequest>) -> Result<Response<ServerInfoResponse>, Status> {
        Ok(Response::new(ServerInfoResponse {
            server_name: self.state.accounts.server_name.to_string(),
            schema_version: ganglion_storage::SCHEMA_VERSION,
            events_position: self.state.events_position().max(0) as u64,
        }))
    }

    async fn send_event(&self, req: Request<SendEventRequest>) -> Result<Response<SendEventResponse>, Status> {
        let request_id =
            req.metadata().get(REQUEST_ID_METADATA).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let r = req.into_inner();
        let span = tracing::info_span!("rpc.send_event", request_id = %request_id, room_id = %r.room_id);
        let room_id =
            OwnedRoomId::try_from(r.room_id.as_str()).map_err(|e| Status::invalid_argument(format!("room_id: {e}")))?;
        let sender =
            OwnedUserId::try_from(r.sender.as_str()).map_err(|e| Status::invalid_argument(format!("sender: {e}")))?;
        if sender.server_name() != self.state.accounts.server_name {
            return Err(Status::invalid_argument("sender is not a local user"));
        }
        let content: serde_json::Value = serde_json::from_str(&r.content_json)
            .map_err(|e| Status::invalid_argument(format!("content_json: {e}")))?;
        if !content.is_object() {
            return Err(Status::invalid_argument("content_json must be an object"));
        }
        let txn = (!r.txn_id.is_empty()).then(|| (r.device_id.clone(), r.txn_id.clone()));
        let origin = WriteOrigin { txn, request_id: request_id.clone(), ts: None };
        let template = EventTemplate { event_type: r.event_type, state_key: r.state_key, content };
        let written = self
            .state
            .rooms
            .writer
            .send(&room_id, &sender, template, &origin)
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(SendEventResponse {
            event_id: written.event_id.to_string(),
            position: written.position.max(0) as u64,
        }))
    }

    async fn ack_to_device(&self, req: Request<AckToDeviceRequest>) -> Result<Response<AckToDeviceResponse>, Status> {
        let r = req.into_inner();
        let user =
            OwnedUserId::try_from(r.user_id.as_str()).map_err(|e| Status::invalid_argument(format!("user_id: {e}")))?;
        let upto = i64::try_from(r.upto).map_err(|_| Status::invalid_argument("upto out of range"))?;
        let deleted = self.state.keys.writer.ack(&user, &r.device_id, upto).await.map_err(|e| {
            tracing::error!(error = %e, "storage failure acknowledging to-device messages");
            Status::internal("storage failure")
        })?;
        Ok(Response::new(AckToDeviceResponse { deleted }))
    }

    async fn set_presence(&self, req: Request<SetPresenceRequest>) -> Result<Response<SetPresenceResponse>, Status> {
        let r = req.into_inner();
        let user =
            OwnedUserId::try_from(r.user_id.as_str()).map_err(|e| Status::invalid_argument(format!("user_id: {e}")))?;
        if !matches!(r.presence.as_str(), "online" | "unavailable" | "offline") {
            return Err(Status::invalid_argument("presence must be online, unavailable or offline"));
        }
        self.state.user_data.presence.sync_activity(&user, &r.presence).await.map_err(|e| {
            tracing::error!(error = %e, "storage failure recording presence");
            Status::internal("storage failure")
        })?;
        Ok(Response::new(SetPresenceResponse {}))
    }

    async fn remove_pusher(&self, req: Request<RemovePusherRequest>) -> Result<Response<RemovePusherResponse>, Status> {
        let r = req.into_inner();
        let user =
            OwnedUserId::try_from(r.user_id.as_str()).map_err(|e| Status::invalid_argument(format!("user_id: {e}")))?;
        let removed = self.state.user_data.pushers.remove(&user, &r.app_id, &r.pushkey).await.map_err(|e| {
            tracing::error!(error = %e, "storage failure removing a pusher");
            Status::internal("storage failure")
        })?;
        if removed {
            tracing::info!(user_id = %user, app_id = r.app_id, "removed a pusher whose pushkey the gateway rejected");
        }
        Ok(Response::new(RemovePusherResponse { removed }))
    }

    async fn receive_pdus(&self, req: Request<ReceivePdusRequest>) -> Result<Response<ReceivePdusResponse>, Status> {
        let request_id =
            req.metadata().get(REQUEST_ID_METADATA).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let r = req.into_inner();
        let span =
            tracing::info_span!("rpc.receive_pdus", request_id = %request_id, origin = %r.origin, pdus = r.pdus.len());
        let writer = &self.state.rooms.writer;
        let mut results = Vec::with_capacity(r.pdus.len());
        async {
            for mut p in r.pdus {
                let version = if p.out_of_band {
                    match ruma::RoomVersionId::try_from(p.room_version.as_str()) {
                        Ok(v) if v.rules().is_some() => Some(v),
                        _ => {
                            results.push(failed(&p.event_id, format!("unsupported room version {}", p.room_version)));
                            continue;
                        }
                    }
                } else {
                    None
                };
                if version.is_some() {
                    p.json = crate::receive::keep_invite_room_state(&p.json).unwrap_or(p.json);
                }
                let result = match ruma::OwnedEventId::try_from(p.event_id.as_str())
                    .map_err(|e| e.to_string())
                    .and_then(|id| ganglion_core::Pdu::from_json(id, &p.json).map_err(|e| e.to_string()))
                {
                    Err(reason) => failed(&p.event_id, reason),
                    Ok(pdu) => {
                        let received = match &version {
                            Some(v) => writer.receive_out_of_band(pdu, v).await,
                            None if p.outlier => writer.receive_outlier(pdu).await,
                            None => writer.receive_pdu(pdu).await,
                        };
                        pdu_result(&p.event_id, received)
                    }
                };
                results.push(result);
            }
        }
        .instrument(span)
        .await;
        Ok(Response::new(ReceivePdusResponse { results }))
    }
}

fn failed(event_id: &str, reason: String) -> PduResult {
    PduResult { event_id: event_id.to_owned(), outcome: PduOutcome::Failed.into(), reason, missing: Vec::new() }
}

fn pdu_result(event_id: &str, received: Result<crate::receive::Received, crate::receive::ReceiveError>) -> PduResult {
    use ganglion_state::Verdict;
    let (outcome, reason, missing) = match received {
        Ok(r) => match r.verdict {
            Verdict::Accepted => (PduOutcome::Accepted, String::new(), Vec::new()),
            Verdict::Rejected(why) => (PduOutcome::Rejected, why, Vec::new()),
            Verdict::SoftFailed(why) => (PduOutcome::SoftFailed, why, Vec::new()),
        },
        Err(crate::receive::ReceiveError::Missing(ids)) => {
            (PduOutcome::Missing, "missing events".to_owned(), ids.iter().map(ToString::to_string).collect())
        }
        Err(crate::receive::ReceiveError::Write(e)) => {
            if let WriteError::Storage(s) = &e {
                tracing::error!(%event_id, error = %s, "storage failure receiving a pdu");
            }
            (PduOutcome::Failed, e.to_string(), Vec::new())
        }
    };
    PduResult { event_id: event_id.to_owned(), outcome: outcome.into(), reason, missing }
}
