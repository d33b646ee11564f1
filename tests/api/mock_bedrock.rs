//! Mock bedrock upstream for the conformance suite (to be written).
