//! NBD frontend.
