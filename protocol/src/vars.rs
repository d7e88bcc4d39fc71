//! The environment variables through which the CLI, the broker, the interposer and the
//! shim talk to each other, named once. Each comes as text and as a C string (the hook
//! reads the environment without allocating). `preload.c` names `CTX_ROUTE` itself; a
//! test keeps the two the same.

use std::ffi::CStr;

macro_rules! vars {
    ($($(#[$doc:meta])* $name:ident, $c_name:ident = $text:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $name: &str = $text;
            $(#[$doc])*
            pub const $c_name: &CStr = match CStr::from_bytes_with_nul(concat!($text, "\0").as_bytes()) {
                Ok(c) => c,
                Err(_) => panic!("a NUL inside a variable name"),
            };
        )*
    };
}

vars! {
    /// The context a process's launches go to; set, the preloaded library routes.
    ROUTE, ROUTE_C = "CTX_ROUTE";
    /// The broker's socket.
    SOCKET, SOCKET_C = "CTX_SOCKET";
    /// Programs (by base name, `:`-separated) that run locally.
    PASSTHROUGH, PASSTHROUGH_C = "CTX_PASSTHROUGH";
    /// Where the shim is, when not beside the library.
    SHIM, SHIM_C = "CTX_SHIM";
    /// `local`: run launches locally while the broker is down (else they fail).
    ON_BROKER_DOWN, ON_BROKER_DOWN_C = "CTX_ON_BROKER_DOWN";
    /// How long a fork child relays a launch before handing it to the shim.
    RELAY_MS, RELAY_MS_C = "CTX_RELAY_MS";
    /// The routing library to preload, when not the installed one.
    INTERPOSER, INTERPOSER_C = "CTX_INTERPOSER";
    /// The shim's hand-over from the hook: its socket, PTY mask and the program's name.
    SHIM_ATTACH, SHIM_ATTACH_C = "CTX_SHIM_ATTACH";
}

/// Variables that switch routing on: they cross into a context only when that context
/// routes on itself (`route_children_to`).
pub const ROUTING: [&str; 7] = [
    "LD_PRELOAD",
    ROUTE,
    SOCKET,
    PASSTHROUGH,
    SHIM,
    ON_BROKER_DOWN,
    RELAY_MS,
];

#[cfg(test)]
mod tests {
    #[test]
    fn text_and_c_string_agree_and_preload_c_names_the_same_route() {
        assert_eq!(super::ROUTE_C.to_str().unwrap(), super::ROUTE);
        assert_eq!(super::SHIM_ATTACH_C.to_str().unwrap(), super::SHIM_ATTACH);
        let preload = include_str!("../../interposer/src/preload.c");
        assert!(preload.contains(&format!("\"{}\"", super::ROUTE)));
    }
}
