//! bedrock through the conformance suite (to be written).
