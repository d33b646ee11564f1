//! Mock gemini upstream for the conformance suite (to be written).
