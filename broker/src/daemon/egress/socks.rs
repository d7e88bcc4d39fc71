//! The SOCKS5 side of the proxy (RFC 1928): `CONNECT` only, to a name (`socks5h://`) or
//! to an address. Username/password (RFC 1929) is offered for attribution and always
//! accepted: the rule is the context's, whoever the client says it is.

use std::net::{Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::listener::{Kind, Outcome, Request};
use super::State;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const USER_PASSWORD: u8 = 2;
const NO_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

pub const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;
const REFUSED: u8 = 5;
const TTL_EXPIRED: u8 = 6;
const COMMAND_UNSUPPORTED: u8 = 7;
const ADDRESS_UNSUPPORTED: u8 = 8;

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Reads the greeting, the optional credentials and the request; `None` when the client
/// left or asked for something this proxy does not do (after telling it so).
pub async fn read_request(client: &mut TcpStream, state: &State) -> Option<Request> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await.ok()?;
    let mut methods = vec![0u8; greeting[1] as usize];
    client.read_exact(&mut methods).await.ok()?;
    let mut launch = None;
    if methods.contains(&USER_PASSWORD) {
        client.write_all(&[VERSION, USER_PASSWORD]).await.ok()?;
        let user = read_field(client, true).await?;
        let password = read_field(client, false).await?;
        client.write_all(&[1, 0]).await.ok()?;
        launch = state.launch(&user, &password);
    } else if methods.contains(&NO_AUTH) {
        client.write_all(&[VERSION, NO_AUTH]).await.ok()?;
    } else {
        let _ = client.write_all(&[VERSION, NO_METHOD]).await;
        return None;
    }

    let mut head = [0u8; 4];
    client.read_exact(&mut head).await.ok()?;
    if head[0] != VERSION {
        return None;
    }
    if head[1] != CMD_CONNECT {
        let _ = reply(client, COMMAND_UNSUPPORTED).await;
        return None;
    }
    let host = match head[3] {
        ATYP_V4 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await.ok()?;
            Ipv4Addr::from(a).to_string().into_bytes()
        }
        ATYP_V6 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await.ok()?;
            Ipv6Addr::from(a).to_string().into_bytes()
        }
        ATYP_NAME => read_field(client, false).await?,
        _ => {
            let _ = reply(client, ADDRESS_UNSUPPORTED).await;
            return None;
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await.ok()?;
    let port = u16::from_be_bytes(port);
    if port == 0 {
        let _ = reply(client, GENERAL_FAILURE).await;
        return None;
    }
    Some(Request {
        host,
        port,
        launch,
        kind: Kind::Socks,
    })
}

/// A length-prefixed field; `subnegotiation`: the auth version byte comes first.
async fn read_field(client: &mut TcpStream, subnegotiation: bool) -> Option<Vec<u8>> {
    if subnegotiation {
        let mut version = [0u8; 1];
        client.read_exact(&mut version).await.ok()?;
    }
    let mut len = [0u8; 1];
    client.read_exact(&mut len).await.ok()?;
    let mut field = vec![0u8; len[0] as usize];
    client.read_exact(&mut field).await.ok()?;
    Some(field)
}

/// The reply code for an outcome.
pub fn code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Denied => NOT_ALLOWED,
        Outcome::Unresolved => HOST_UNREACHABLE,
        Outcome::Unreachable => REFUSED,
        Outcome::TimedOut => TTL_EXPIRED,
    }
}

/// A reply with an unspecified bound address (the client has no use for ours).
pub async fn reply(client: &mut TcpStream, code: u8) -> std::io::Result<()> {
    client
        .write_all(&[VERSION, code, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await
}
