//! The hostile-input suite, the admin API: slow and anonymous clients, framing, the socket and the token.
