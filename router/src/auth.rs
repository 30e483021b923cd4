//! Who a connection is: user-name rules and the `open` / `jwt` authenticators.
//! Pure functions, no I/O once constructed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AuthMode, Config};
use ringrouter_proto::names::check_name;
use ringrouter_proto::Status;

/// Why a login or a name was refused; goes back to the client as (status, reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    /// Status code for the client.
    pub status: Status,
    /// Human-readable reason.
    pub reason: String,
}

impl AuthError {
    fn new(status: Status, reason: impl Into<String>) -> Self {
        AuthError {
            status,
            reason: reason.into(),
        }
    }
}

/// Checks a user name against the one name rule ([`ringrouter_proto::names`]);
/// a refusal is BAD_REQUEST with a reason naming `field`.
pub fn check_user(field: &'static str, name: &str) -> Result<(), AuthError> {
    check_name(field, name).map_err(|e| AuthError::new(Status::BadRequest, e.to_string()))
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    /// Issued at (seconds since the epoch; a NumericDate may have a fraction).
    #[serde(default)]
    iat: Option<f64>,
}

/// Decides who a Login is.
#[allow(clippy::large_enum_variant)] // built once at start-up
pub enum Authenticator {
    /// Any valid user name.
    Open,
    /// A registered user; the password is checked against the store by the caller.
    Accounts,
    /// HS256 JWT, `sub` = user, `exp` required; `exp`, `nbf` and `iat` checked with
    /// a leeway for clock skew.
    Jwt {
        /// The verification key.
        key: jsonwebtoken::DecodingKey,
        /// Algorithm and claim checks (`exp`, `nbf`, with the leeway).
        validation: jsonwebtoken::Validation,
        /// Clock skew allowed, in seconds (`iat` is checked here with it).
        leeway: u64,
    },
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Open => f.write_str("Open"),
            Authenticator::Accounts => f.write_str("Accounts"),
            Authenticator::Jwt { .. } => f.write_str("Jwt"),
        }
    }
}

impl Authenticator {
    /// Builds the authenticator for `cfg`, reading the JWT secret file if needed.
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        match cfg.auth {
            AuthMode::Open => Ok(Authenticator::Open),
            AuthMode::Accounts => Ok(Authenticator::Accounts),
            AuthMode::Jwt => {
                let path = cfg
                    .jwt_secret_file
                    .as_ref()
                    .ok_or("--auth jwt needs --jwt-secret-file")?;
                let raw = std::fs::read(path).map_err(|e| {
                    format!("cannot read --jwt-secret-file {}: {e}", path.display())
                })?;
                let secret = trim_ascii(&raw);
                if secret.is_empty() {
                    return Err(format!("--jwt-secret-file {} is empty", path.display()));
                }
                Ok(Self::jwt_from_secret(secret, cfg.jwt_leeway))
            }
        }
    }

    /// An HS256 authenticator with this secret, allowing `leeway` of clock skew on
    /// `exp` (expired that long ago), `nbf` (valid that soon) and `iat` (issued that far
    /// in the future).
    pub fn jwt_from_secret(secret: &[u8], leeway: Duration) -> Self {
        let leeway = leeway.as_secs();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator::Jwt {
            key: jsonwebtoken::DecodingKey::from_secret(secret),
            validation,
            leeway,
        }
    }

    /// Authenticates a Login; returns the user name the session will carry.
    /// Under jwt the token's `sub` is the user; a `user` field that disagrees is refused.
    pub fn login(&self, user: &str, token: &str) -> Result<String, AuthError> {
        match self {
            Authenticator::Open | Authenticator::Accounts => {
                check_user("user", user)?;
                Ok(user.to_owned())
            }
            Authenticator::Jwt {
                key,
                validation,
                leeway,
            } => {
                if token.is_empty() {
                    return Err(AuthError::new(
                        Status::Unauthorized,
                        "a token is required (--auth jwt)",
                    ));
                }
                let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
                    AuthError::new(Status::Unauthorized, format!("invalid token: {e}"))
                })?;
                if let Some(iat) = data.claims.iat {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    if iat > now.saturating_add(*leeway) as f64 {
                        return Err(AuthError::new(
                            Status::Unauthorized,
                            "invalid token: issued in the future (iat)",
                        ));
                    }
                }
                let sub = data.claims.sub;
                if !user.is_empty() && user != sub {
                    return Err(AuthError::new(
                        Status::Unauthorized,
                        "user does not match the token's subject",
                    ));
                }
                check_user("sub", &sub)?;
                Ok(sub)
            }
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const LEEWAY: Duration = Duration::from_secs(30);

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[derive(serde::Serialize, Default)]
    struct C<'a> {
        sub: &'a str,
        exp: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iat: Option<i64>,
    }

    fn sign(secret: &[u8], claims: &C<'_>) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn token(secret: &[u8], sub: &str, exp_offset: i64) -> String {
        sign(
            secret,
            &C {
                sub,
                exp: now() + exp_offset,
                ..Default::default()
            },
        )
    }

    fn jwt() -> Authenticator {
        Authenticator::jwt_from_secret(b"s3cret", LEEWAY)
    }

    #[test]
    fn names() {
        assert!(check_user("user", "alice").is_ok());
        assert!(check_user("user", "zoë").is_ok());
        let e = check_user("user", "").unwrap_err();
        assert_eq!(e.status, Status::BadRequest);
        assert_eq!(e.reason, "user: is empty");
        assert!(check_user("user", "a b ").is_err());
        assert!(check_user("user", "a\u{0}").is_err());
        assert!(check_user("user", &"x".repeat(65)).is_err());
    }

    #[test]
    fn jwt_good_bad_expired() {
        let a = jwt();
        assert_eq!(
            a.login("", &token(b"s3cret", "alice", 60)).unwrap(),
            "alice"
        );
        assert_eq!(
            a.login("alice", &token(b"s3cret", "alice", 60)).unwrap(),
            "alice"
        );
        let refused = |user: &str, token: &str| a.login(user, token).unwrap_err().status;
        assert_eq!(
            refused("bob", &token(b"s3cret", "alice", 60)),
            Status::Unauthorized
        );
        assert_eq!(
            refused("", &token(b"other", "alice", 60)),
            Status::Unauthorized
        );
        assert_eq!(
            refused("", &token(b"s3cret", "alice", -60)),
            Status::Unauthorized
        );
        assert_eq!(refused("alice", ""), Status::Unauthorized);
        assert_eq!(refused("", "garbage"), Status::Unauthorized);
        // A subject that breaks the name rule is a bad request, naming the claim.
        let e = a.login("", &token(b"s3cret", "a b ", 60)).unwrap_err();
        assert_eq!(
            (e.status, e.reason.as_str()),
            (
                Status::BadRequest,
                "sub: contains U+0020 (whitespace at an end)"
            )
        );
    }

    #[test]
    fn jwt_exp_within_the_leeway_is_accepted() {
        let a = jwt();
        // Expired 10 s ago: within 30 s of skew.
        assert!(a.login("", &token(b"s3cret", "alice", -10)).is_ok());
        // Without leeway it is refused.
        let strict = Authenticator::jwt_from_secret(b"s3cret", Duration::ZERO);
        assert_eq!(
            strict
                .login("", &token(b"s3cret", "alice", -10))
                .unwrap_err()
                .status,
            Status::Unauthorized
        );
    }

    #[test]
    fn jwt_not_yet_valid_is_refused() {
        let a = jwt();
        let with_nbf = |nbf: i64| {
            sign(
                b"s3cret",
                &C {
                    sub: "alice",
                    exp: now() + 600,
                    nbf: Some(now() + nbf),
                    ..Default::default()
                },
            )
        };
        let e = a.login("", &with_nbf(120)).unwrap_err();
        assert_eq!(e.status, Status::Unauthorized, "{e}");
        // Within the leeway, and in the past: fine.
        assert!(a.login("", &with_nbf(10)).is_ok());
        assert!(a.login("", &with_nbf(-60)).is_ok());
    }

    #[test]
    fn jwt_issued_in_the_future_is_refused() {
        let a = jwt();
        let with_iat = |iat: i64| {
            sign(
                b"s3cret",
                &C {
                    sub: "alice",
                    exp: now() + 600,
                    iat: Some(now() + iat),
                    ..Default::default()
                },
            )
        };
        let e = a.login("", &with_iat(120)).unwrap_err();
        assert_eq!(e.status, Status::Unauthorized, "{e}");
        assert!(e.reason.contains("iat"), "{e}");
        assert!(a.login("", &with_iat(10)).is_ok());
        assert!(a.login("", &with_iat(-3600)).is_ok());
    }

    #[test]
    fn open_takes_any_valid_name() {
        let a = Authenticator::Open;
        assert_eq!(a.login("bob", "").unwrap(), "bob");
        assert_eq!(a.login("", "").unwrap_err().reason, "user: is empty");
        assert_eq!(
            a.login("bo\u{202e}b", "").unwrap_err().reason,
            "user: contains U+202E (format character)"
        );
    }
}
