//! tuning tests (below).
