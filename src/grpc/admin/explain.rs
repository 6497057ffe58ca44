//! The Admin API's questions about the policy: Explain (why a check came out as it did) and
//! WhoCan (every key holding an entitlement).

use super::*;

/// The most holders one WhoCan answer lists (the first, in order); `total` counts them all.
pub(crate) const MAX_HOLDERS: usize = 50_000;

impl AdminService {
    pub(super) async fn explain_inner(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let r = request.into_inner();
        let check = pb::CheckRequest {
            entitlement: r.entitlement.clone(),
            resource: r.resource.clone(),
            ..Default::default()
        };
        let resource = crate::grpc::convert::resource(&check).map_err(Status::from)?;
        if r.key_prefix.len() > crate::domain::MAX_ID_LEN {
            return Err(bad_field("key_prefix", "at most 256 bytes"));
        }
        if r.min_revision > self.state.revision() {
            self.state
                .wait_for_revision(r.min_revision, std::time::Duration::from_secs(5))
                .await
                .map_err(|have| {
                    Status::unavailable(format!(
                        "revision {} has not been applied here in time; this instance has \
                         revision {have}",
                        r.min_revision
                    ))
                })?;
        }
        let (checked, explanation) =
            self.state
                .explain(&r.key_prefix, &r.entitlement, resource, unix_now());
        // The answer shows the requestor's keys: the caller must read the audit of every team
        // they are in (of an unknown key, at ALL, so that it tells no one else which exist).
        let mut teams: Vec<&str> = explanation.keys.iter().map(|k| k.team.as_str()).collect();
        teams.sort_unstable();
        teams.dedup();
        if teams.is_empty() {
            self.global(&caller, "audit.read")?;
        }
        for team in teams {
            self.team_scoped(&caller, "audit.read", team)?;
        }
        Ok(Response::new(pb::ExplainResponse {
            check: Some(pb::CheckResponse::from(&checked)),
            explanation: Some(pb::Explanation::from(&explanation)),
        }))
    }

    pub(super) async fn who_can_inner(
        &self,
        request: Request<pb::WhoCanRequest>,
    ) -> Result<Response<pb::WhoCanResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        self.global(&caller, "keys.read")?;
        self.global(&caller, "users.read")?;
        let r = request.get_ref();
        if r.entitlement.len() > crate::domain::MAX_ID_LEN {
            return Err(bad_field("entitlement", "at most 256 bytes"));
        }
        if r.team_id.len() > crate::domain::MAX_ID_LEN {
            return Err(bad_field("team_id", "at most 256 bytes"));
        }
        let team = (!r.team_id.is_empty()).then_some(r.team_id.as_str());
        let revision = self.state.revision();
        // Only the holders answered are encoded, inside the read: they borrow from the model.
        let (holders, total) = self
            .state
            .read_model(|m| {
                let answer = crate::domain::privileges::who_can(
                    m,
                    &r.entitlement,
                    team,
                    unix_now(),
                    MAX_HOLDERS,
                )?;
                let holders: Vec<pb::Holder> = answer.first.iter().map(pb::Holder::from).collect();
                Ok((holders, answer.total as u64))
            })
            .map_err(|e: crate::domain::privileges::NotInCatalog| {
                bad_field("entitlement", e.to_string())
            })?;
        Ok(Response::new(pb::WhoCanResponse {
            holders,
            revision,
            total,
        }))
    }
}
