//! Mock anthropic upstream for the conformance suite (to be written).
