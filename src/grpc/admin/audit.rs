//! The audit trail of administration: one structured log line per Admin call, allowed or
//! refused, under the target `rolegate::audit` (filter it with `RUST_LOG=rolegate::audit=info`).
//! It names the caller by its key prefix, never by its secret.

use tonic::{Response, Status, metadata::MetadataMap};

use crate::{domain::key::is_valid_prefix, grpc::pb};

/// The longest refusal message written to the audit line.
const MAX_MESSAGE: usize = 400;

/// A response that carries the revision it answered from or committed.
pub(super) trait Revisioned {
    fn revision(&self) -> u64;
}

impl Revisioned for pb::ExplainResponse {
    fn revision(&self) -> u64 {
        self.check.as_ref().map_or(0, |c| c.revision)
    }
}

macro_rules! revisioned {
    ($($t:ty),* $(,)?) => {
        $(impl Revisioned for $t {
            fn revision(&self) -> u64 {
                self.revision
            }
        })*
    };
}

revisioned!(
    pb::WhoCanResponse,
    pb::TeamResponse,
    pb::ListTeamsResponse,
    pb::UserResponse,
    pb::ListUsersResponse,
    pb::ProjectResponse,
    pb::ListProjectsResponse,
    pb::CreateKeyResponse,
    pb::KeyResponse,
    pb::ListKeysResponse,
    pb::RoleResponse,
    pb::ListRolesResponse,
    pb::ListRoutesResponse,
    pb::WriteResponse,
    pb::ApplyResponse,
    pb::ListHistoryResponse,
);

/// One Admin call being audited.
pub(super) struct Audit {
    rpc: &'static str,
    caller: String,
    target: String,
}

impl Audit {
    /// Starts the record of `rpc` on `target`, with the caller's key prefix as presented (a
    /// malformed credential is recorded as such, never copied).
    pub(super) fn begin(rpc: &'static str, metadata: &MetadataMap, target: String) -> Self {
        Audit {
            rpc,
            caller: presented_prefix(metadata),
            target,
        }
    }

    /// Writes the line for the call's result.
    pub(super) fn end<R: Revisioned>(self, result: &Result<Response<R>, Status>) {
        let Audit {
            rpc,
            caller,
            target,
        } = self;
        match result {
            Ok(response) => tracing::info!(
                target: "rolegate::audit",
                caller = %caller,
                rpc,
                object = %target,
                outcome = "allowed",
                revision = response.get_ref().revision(),
                "admin call"
            ),
            Err(status) => {
                let mut message = status.message().to_owned();
                if message.len() > MAX_MESSAGE {
                    let mut end = MAX_MESSAGE;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                    message.push('…');
                }
                tracing::warn!(
                    target: "rolegate::audit",
                    caller = %caller,
                    rpc,
                    object = %target,
                    outcome = "refused",
                    code = ?status.code(),
                    reason = %message,
                    "admin call"
                );
            }
        }
    }
}

/// The key prefix of `authorization: ApiKey <prefix>.<secret>`: `-` when absent, `malformed`
/// when it is not a well-formed prefix (so nothing a caller sends is logged verbatim).
fn presented_prefix(metadata: &MetadataMap) -> String {
    let Some(value) = metadata.get("authorization") else {
        return "-".into();
    };
    let prefix = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("ApiKey "))
        .and_then(|k| k.trim().split_once('.'))
        .map(|(prefix, _)| prefix)
        .filter(|p| is_valid_prefix(p));
    prefix.map_or_else(|| "malformed".into(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert("authorization", value.parse().unwrap());
        md
    }

    #[test]
    fn only_a_well_formed_prefix_is_recorded() {
        assert_eq!(presented_prefix(&MetadataMap::new()), "-");
        assert_eq!(
            presented_prefix(&with("ApiKey AdamAdminKey00000001.secret-part")),
            "AdamAdminKey00000001"
        );
        // No dot: the whole value could be a secret; it is not copied.
        assert_eq!(
            presented_prefix(&with("ApiKey onlysecretvalue")),
            "malformed"
        );
        assert_eq!(presented_prefix(&with("Bearer abc.def")), "malformed");
        assert_eq!(presented_prefix(&with("ApiKey bad prefix!.x")), "malformed");
    }
}
