//! Callers of the Admin API: `authorization: ApiKey` metadata, the bootstrap SYSTEM_OWNER key a
//! store server starts with, and the example policy seeded through `Apply`.

use rolegate::{
    domain::SecretHash,
    grpc::pb::{self, admin_client::AdminClient},
};
use tonic::{Request, transport::Channel};

/// The bootstrap SYSTEM_OWNER key of every store server of the tests (its hash is passed to the
/// server, see [`bootstrap_hash`]).
pub const BOOTSTRAP: &str = "RolegateBootstrap01.test-only-bootstrap-secret";

/// The hash of the bootstrap key's secret.
pub fn bootstrap_hash() -> String {
    let (_, secret) = BOOTSTRAP.split_once('.').unwrap();
    SecretHash::of_secret(secret).to_hex()
}

/// A request carrying `authorization: ApiKey <key>`.
pub fn call<T>(key: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("ApiKey {key}").parse().unwrap());
    req
}

/// The example policy with the bootstrap team, user and key added, so that applying it keeps
/// the caller.
pub fn example_with_bootstrap() -> String {
    let text = super::example_policy();
    let text = text.replacen(
        "\nteams:\n",
        "\nteams:\n  - { id: system, name: System }\n",
        1,
    );
    let text = text.replacen(
        "\nusers:\n",
        "\nusers:\n  - { id: bootstrap, name: Bootstrap operator }\n",
        1,
    );
    text.replacen(
        "\nkeys:\n",
        &format!(
            "\nkeys:\n  - {{ prefix: RolegateBootstrap01, secret_sha256: {}, type: team, user: bootstrap, team: system, roles: [SYSTEM_OWNER] }}\n",
            bootstrap_hash()
        ),
        1,
    )
}

/// Seeds the example policy through Apply; returns the committed revision.
pub async fn seed_example(admin: &mut AdminClient<Channel>) -> u64 {
    admin
        .apply(call(
            BOOTSTRAP,
            pb::ApplyRequest {
                document: example_with_bootstrap(),
                dry_run: false,
                prune: true,
                name: String::new(),
            },
        ))
        .await
        .expect("apply the example policy")
        .into_inner()
        .revision
}

/// The field violations of an InvalidArgument status: (field, description).
pub fn field_violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}
