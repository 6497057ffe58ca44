//! API keys: `<prefix>.<secret>`, split at the first dot. The prefix is the public id; only the
//! SHA-256 of the secret is ever stored, and it is compared in constant time.

use std::{fmt, str::FromStr};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The longest key accepted, prefix and secret together.
pub(crate) const MAX_KEY_LEN: usize = 256;
/// Shortest and longest prefix, as in the policy file format.
pub(crate) const PREFIX_LEN: std::ops::RangeInclusive<usize> = 4..=64;

/// A presented key, borrowed from the request: parsing never allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'a> {
    pub prefix: &'a str,
    secret: &'a str,
}

// A hand-written Debug so that a key can never reach a log through `{:?}`.
impl fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("prefix", &self.prefix)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a presented key is not of the form `<prefix>.<secret>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("the key has characters outside printable ASCII")]
    NotAscii,
    #[error("the key has no '.' between prefix and secret")]
    NoDot,
    #[error("the key's prefix is empty")]
    EmptyPrefix,
    #[error("the key's secret is empty")]
    EmptySecret,
    #[error("the key's prefix is not 4 to 64 characters of [A-Za-z0-9_-]")]
    BadPrefix,
}

impl<'a> ApiKey<'a> {
    /// Parses `<prefix>.<secret>`, splitting at the first dot.
    pub fn parse(key: &'a str) -> Result<Self, MalformedKey> {
        if key.is_empty() {
            return Err(MalformedKey::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(MalformedKey::TooLong);
        }
        // Folded without an early exit, so the compiler checks many bytes per instruction: every
        // check parses a key, and a short-circuiting loop spent a branch per byte.
        if !key.bytes().fold(true, |ok, b| ok & b.is_ascii_graphic()) {
            return Err(MalformedKey::NotAscii);
        }
        let (prefix, secret) = key.split_once('.').ok_or(MalformedKey::NoDot)?;
        if prefix.is_empty() {
            return Err(MalformedKey::EmptyPrefix);
        }
        if secret.is_empty() {
            return Err(MalformedKey::EmptySecret);
        }
        if !is_valid_prefix(prefix) {
            return Err(MalformedKey::BadPrefix);
        }
        Ok(ApiKey { prefix, secret })
    }

    /// The SHA-256 of the secret part.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of_secret(self.secret)
    }
}

/// Whether `prefix` is 4 to 64 characters of `[A-Za-z0-9_-]`.
pub(crate) fn is_valid_prefix(prefix: &str) -> bool {
    // Without an early exit or short-circuits, for the same reason as in `ApiKey::parse`.
    PREFIX_LEN.contains(&prefix.len())
        && prefix.bytes().fold(true, |ok, b| {
            ok & (b.is_ascii_alphanumeric() | (b == b'_') | (b == b'-'))
        })
}

/// The SHA-256 of a key's secret: the only form in which a secret is kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Hashes the secret part of a key.
    pub fn of_secret(secret: &str) -> Self {
        SecretHash(Sha256::digest(secret.as_bytes()).into())
    }

    /// Compares in constant time, so the time taken does not tell how many bytes matched. As
    /// four words rather than 32 bytes: `subtle` puts an optimisation barrier on each element
    /// compared, and this runs on every check.
    pub(crate) fn matches(&self, other: &SecretHash) -> bool {
        self.words().ct_eq(&other.words()).into()
    }

    fn words(&self) -> [u64; 4] {
        std::array::from_fn(|i| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(word)
        })
    }

    /// Lower-case hex, as written in policy files.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({})", self.to_hex())
    }
}

/// The text is not 64 lower-case hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "secret_sha256 must be 64 lower-case hex digits (the SHA-256 of the part after the first dot)"
)]
pub struct BadHash;

impl FromStr for SecretHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(BadHash);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadHash)?;
        Ok(SecretHash(out))
    }
}

/// A key's lifecycle status, as on the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    Active,
    Inactive,
    Pending,
    Rejected,
    Deleted,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Inactive => "inactive",
            KeyStatus::Pending => "pending",
            KeyStatus::Rejected => "rejected",
            KeyStatus::Deleted => "deleted",
        }
    }
}

impl FromStr for KeyStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => KeyStatus::Active,
            "inactive" => KeyStatus::Inactive,
            "pending" => KeyStatus::Pending,
            "rejected" => KeyStatus::Rejected,
            "deleted" => KeyStatus::Deleted,
            other => {
                return Err(format!(
                    "unknown key status {other:?} (expected active, inactive, pending, rejected or deleted)"
                ));
            }
        })
    }
}

/// Team keys belong to a user in a team; project keys to a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Team,
    Project,
}

impl KeyType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::Team => "team",
            KeyType::Project => "project",
        }
    }
}

/// When a key stops authenticating: unix seconds in 32 bits (from 1970 to 2106-02-07), or
/// never. Four bytes instead of an `Option<i64>`'s sixteen keep a key's binding in a 128-byte
/// allocation (docs/performance.md).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expiry(u32);

/// An expiry outside what [`Expiry`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expires_at {0} is out of range: {RANGE} (unix 0 to 4294967294)", RANGE = Expiry::RANGE)]
pub struct ExpiryOutOfRange(pub i64);

impl Expiry {
    /// What [`Expiry::at`] accepts, for error messages.
    pub(crate) const RANGE: &str =
        "a key expires between 1970-01-01T00:00:00Z and 2106-02-07T06:28:14Z";

    /// A key that does not expire.
    pub const NEVER: Expiry = Expiry(u32::MAX);

    /// The key expires at `unix` seconds.
    pub fn at(unix: i64) -> Result<Expiry, ExpiryOutOfRange> {
        match u32::try_from(unix) {
            Ok(secs) if secs != u32::MAX => Ok(Expiry(secs)),
            _ => Err(ExpiryOutOfRange(unix)),
        }
    }

    /// The key expires at `unix` seconds, or never when `None`.
    pub(crate) fn from_unix(unix: Option<i64>) -> Result<Expiry, ExpiryOutOfRange> {
        unix.map_or(Ok(Expiry::NEVER), Expiry::at)
    }

    /// The instant in unix seconds; `None` for a key that does not expire.
    pub fn unix(self) -> Option<i64> {
        (self != Expiry::NEVER).then_some(i64::from(self.0))
    }

    /// Whether the key has expired at `now` (unix seconds).
    pub fn is_reached(self, now: i64) -> bool {
        (self != Expiry::NEVER) & (now >= i64::from(self.0))
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.unix(), f)
    }
}

/// A freshly generated key: printed once, then only its hash is kept.
pub struct NewKey {
    pub key: String,
    pub hash: SecretHash,
}

/// Generates a key with the given prefix and a 32-character random secret
/// (190 bits from the operating system's generator).
pub fn generate_key(prefix: &str) -> Result<NewKey, MalformedKey> {
    use rand::{Rng, distr::Alphanumeric};
    if !is_valid_prefix(prefix) {
        return Err(MalformedKey::BadPrefix);
    }
    let secret: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let hash = SecretHash::of_secret(&secret);
    Ok(NewKey {
        key: format!("{prefix}.{secret}"),
        hash,
    })
}

/// Generates a random prefix of 20 characters, the length the platform's SDKs use.
pub fn generate_prefix() -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_holds_1970_to_2106_and_never() {
        let at = Expiry::at(1_800_000_000).unwrap();
        assert_eq!(at.unix(), Some(1_800_000_000));
        assert!(!at.is_reached(1_799_999_999));
        assert!(at.is_reached(1_800_000_000));
        assert_eq!(Expiry::at(0).unwrap().unix(), Some(0));
        assert_eq!(
            Expiry::at(4_294_967_294).unwrap().unix(),
            Some(4_294_967_294)
        );
        for out in [-1, 4_294_967_295, i64::MAX, i64::MIN] {
            assert_eq!(Expiry::at(out), Err(ExpiryOutOfRange(out)));
        }
        assert_eq!(Expiry::from_unix(None), Ok(Expiry::NEVER));
        assert_eq!(Expiry::NEVER.unix(), None);
        assert!(!Expiry::NEVER.is_reached(i64::MAX));
    }

    #[test]
    fn splits_at_the_first_dot() {
        let key = ApiKey::parse("Prefix01.sec.ret").unwrap();
        assert_eq!(key.prefix, "Prefix01");
        assert_eq!(key.secret_hash(), SecretHash::of_secret("sec.ret"));
    }

    #[test]
    fn malformed_keys_are_told_apart() {
        let long = format!("Prefix01.{}", "a".repeat(300));
        let cases: &[(&str, MalformedKey)] = &[
            ("", MalformedKey::Empty),
            ("nodot", MalformedKey::NoDot),
            (".secret", MalformedKey::EmptyPrefix),
            ("Prefix01.", MalformedKey::EmptySecret),
            ("Préfix01.secret", MalformedKey::NotAscii),
            ("Prefix01.sec ret", MalformedKey::NotAscii),
            ("Pr\u{0}x.secret", MalformedKey::NotAscii),
            ("abc.secret", MalformedKey::BadPrefix),
            ("Pre/fix.secret", MalformedKey::BadPrefix),
            (&long, MalformedKey::TooLong),
        ];
        for (key, want) in cases {
            assert_eq!(ApiKey::parse(key), Err(*want), "{key:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKey::parse("Prefix01.topsecret").unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("Prefix01"));
    }

    #[test]
    fn hashes_round_trip_through_hex_and_compare() {
        let hash = SecretHash::of_secret("password");
        assert_eq!(
            hash.to_hex(),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert_eq!(hash.to_hex().parse::<SecretHash>(), Ok(hash));
        assert!(hash.matches(&SecretHash::of_secret("password")));
        assert!(!hash.matches(&SecretHash::of_secret("passwore")));
        assert!("5E88".parse::<SecretHash>().is_err());
        assert!(hash.to_hex().to_uppercase().parse::<SecretHash>().is_err());
    }

    #[test]
    fn a_hash_differing_in_any_one_bit_does_not_match() {
        let hash = SecretHash::of_secret("password");
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = hash;
                other.0[byte] ^= 1 << bit;
                assert!(!hash.matches(&other), "byte {byte} bit {bit}");
                assert!(!other.matches(&hash), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn generated_keys_parse_and_match_their_hash() {
        let new = generate_key("Generated01").unwrap();
        let key = ApiKey::parse(&new.key).unwrap();
        assert_eq!(key.prefix, "Generated01");
        assert!(key.secret_hash().matches(&new.hash));
        assert!(generate_key("x").is_err());
        assert!(is_valid_prefix(&generate_prefix()));
    }
}
