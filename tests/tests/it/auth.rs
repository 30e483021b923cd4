//! Authentication: open auth is refused on a public address unless explicitly
//! allowed; `--auth jwt` logs a token's `sub` in and refuses everything else.

use ringrouter_client::{Client, ClientConfig, ClientError, Status};
use ringrouter_tests::{jwt, jwt_with, Driver, RouterProc, TempFile, T};

const SECRET: &[u8] = b"an HS256 secret for the tests, long enough";

#[test]
fn open_auth_on_a_public_address_refuses_to_start() {
    let exit = match RouterProc::launch(&["--listen", "0.0.0.0:0"], Driver::Default) {
        Ok(r) => panic!("router started with open auth on 0.0.0.0: {}", r.banner),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(2), "{exit}");
    assert!(
        exit.stderr.contains("--allow-open-auth-on-public"),
        "the refusal names the flag that overrides it: {exit}"
    );
    // The HTTP port takes logins too (its `/ws`): public with open auth, it is refused.
    let args = ["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"];
    let exit = match RouterProc::launch(&args, Driver::Default) {
        Ok(r) => panic!(
            "router started with open auth on HTTP 0.0.0.0: {}",
            r.banner
        ),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(2), "{exit}");
    assert!(
        exit.stderr.contains("0.0.0.0:0"),
        "names the address: {exit}"
    );
}

#[test]
fn open_auth_on_a_public_address_starts_when_allowed() {
    let r = RouterProc::start(&["--listen", "0.0.0.0:0", "--allow-open-auth-on-public"]);
    assert!(r.addr.ip().is_unspecified(), "{}", r.banner);
    let mut a = r.client("pub-a");
    let mut b = r.client("pub-b");
    a.send_wait("pub-b", b"hello").expect("send");
    let m = b.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(m.sender, "pub-a");
}

#[test]
fn jwt_without_a_secret_file_refuses_to_start() {
    let exit = match RouterProc::launch(&["--auth", "jwt"], Driver::Default) {
        Ok(r) => panic!("router started with --auth jwt and no secret: {}", r.banner),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(2), "{exit}");
    assert!(exit.stderr.contains("--jwt-secret-file"), "{exit}");

    // A secret file that does not exist is refused too.
    let exit = match RouterProc::launch(
        &[
            "--auth",
            "jwt",
            "--jwt-secret-file",
            "/nonexistent/ringrouter-secret",
        ],
        Driver::Default,
    ) {
        Ok(r) => panic!("router started with a missing secret file: {}", r.banner),
        Err(e) => e,
    };
    assert_eq!(exit.code, Some(2), "{exit}");
    assert!(
        exit.stderr.contains("/nonexistent/ringrouter-secret"),
        "{exit}"
    );
}

fn jwt_router(secret: &TempFile) -> RouterProc {
    RouterProc::start(&["--auth", "jwt", "--jwt-secret-file", secret.as_str()])
}

fn with_token(user: &str, token: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::new(user);
    c.token = token;
    c.timeout = T;
    c
}

#[track_caller]
fn expect_unauthorized(r: &RouterProc, what: &str, cfg: ClientConfig) {
    match r.client_with(cfg) {
        Ok(c) => panic!("{what}: logged in as {:?}", c.user()),
        Err(ClientError::Auth { code, reason }) => {
            assert_eq!(code, Status::Unauthorized, "{what}: {reason}");
            assert!(!reason.is_empty(), "{what}: no reason");
        }
        Err(e) => panic!("{what}: expected a refused login, got {e}"),
    }
}

#[test]
fn jwt_logs_in_the_tokens_subject() {
    // A trailing newline in the file is not part of the secret.
    let secret = TempFile::new("jwt-secret", &[SECRET, b"\n"].concat());
    let r = jwt_router(&secret);
    // No user name: the token's subject is the user.
    let mut alice = r
        .client_with(with_token("", Some(jwt(SECRET, "alice", 300))))
        .expect("alice's token");
    assert_eq!(alice.user(), "alice");
    // A user name that agrees with the token is fine.
    let mut bob = r
        .client_with(with_token("bob", Some(jwt(SECRET, "bob", 300))))
        .expect("bob's token");
    assert_eq!(bob.user(), "bob");
    alice.send_wait("bob", b"signed").expect("send");
    let m = bob.recv(Some(T)).expect("recv").expect("message");
    assert_eq!(m.sender, "alice", "from_user is the token's subject");
    assert_eq!(&m.payload[..], b"signed");
}

#[test]
fn jwt_refuses_bad_tokens() {
    let secret = TempFile::new("jwt-secret", SECRET);
    let r = jwt_router(&secret);
    expect_unauthorized(&r, "missing token", with_token("alice", None));
    expect_unauthorized(
        &r,
        "wrong secret",
        with_token("", Some(jwt(b"not the secret", "alice", 300))),
    );
    expect_unauthorized(
        &r,
        "expired",
        with_token("", Some(jwt(SECRET, "alice", -60))),
    );
    expect_unauthorized(
        &r,
        "HS512 instead of HS256",
        with_token(
            "",
            Some(jwt_with(
                jsonwebtoken::Algorithm::HS512,
                SECRET,
                "alice",
                300,
            )),
        ),
    );
    expect_unauthorized(&r, "garbage", with_token("", Some("a.b.c".into())));
    expect_unauthorized(
        &r,
        "user name other than the subject",
        with_token("mallory", Some(jwt(SECRET, "alice", 300))),
    );
    // The router is fine, and a good token still works.
    let c = r
        .client_with(with_token("", Some(jwt(SECRET, "alice", 300))))
        .expect("good token");
    assert_eq!(c.user(), "alice");
}

#[test]
fn jwt_refused_login_can_retry_on_the_same_connection() {
    let secret = TempFile::new("jwt-secret", SECRET);
    let r = jwt_router(&secret);
    let stream = std::net::TcpStream::connect(r.connect_addr()).expect("connect");
    let mut c = Client::from_stream(stream, with_token("", Some(jwt(SECRET, "carol", -60))));
    let err = c.login().expect_err("expired token");
    assert_eq!(err.code(), Some(Status::Unauthorized), "{err}");
    // Nothing works before a successful login.
    let err = c.send_wait("carol", b"x").expect_err("send before login");
    assert_eq!(err.code(), Some(Status::Unauthorized), "{err}");
    let stream = c.stream().try_clone().expect("clone");
    let mut c = Client::from_stream(stream, with_token("", Some(jwt(SECRET, "carol", 300))));
    c.login().expect("fresh token on the same connection");
    assert_eq!(c.user(), "carol");
}

/// A token for `sub` with `exp`, and `nbf` / `iat` when given, each in seconds from now.
fn token_with(sub: &str, exp: i64, nbf: Option<i64>, iat: Option<i64>) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iat: Option<i64>,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub,
            exp: now + exp,
            nbf: nbf.map(|n| now + n),
            iat: iat.map(|i| now + i),
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("encoding a JWT")
}

/// Before: `nbf` and `iat` were not looked at (a token minted for later worked at once),
/// and `exp` had no leeway for clock skew.
#[test]
fn jwt_not_yet_valid_or_issued_in_the_future_is_refused_within_the_leeway() {
    let secret = TempFile::new("jwt-secret", SECRET);
    let r = RouterProc::start(&[
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret.as_str(),
        "--jwt-leeway",
        "30s",
    ]);
    expect_unauthorized(
        &r,
        "nbf 5 minutes ahead",
        with_token("", Some(token_with("nina", 600, Some(300), None))),
    );
    expect_unauthorized(
        &r,
        "iat 5 minutes ahead",
        with_token("", Some(token_with("nina", 600, None, Some(300)))),
    );
    // Within the leeway (clock skew), each is accepted.
    for (what, token) in [
        ("nbf 5 s ahead", token_with("nina", 600, Some(5), None)),
        ("iat 5 s ahead", token_with("nina", 600, None, Some(5))),
        ("expired 5 s ago", token_with("nina", -5, None, None)),
        (
            "nbf and iat in the past",
            token_with("nina", 600, Some(-60), Some(-60)),
        ),
    ] {
        let c = r
            .client_with(with_token("", Some(token)))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c.user(), "nina", "{what}");
    }
    // Past the leeway, expired is expired.
    expect_unauthorized(
        &r,
        "expired 60 s ago",
        with_token("", Some(token_with("nina", -60, None, None))),
    );
}
