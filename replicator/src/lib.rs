//! urbd engine.
