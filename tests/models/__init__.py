"""Tests for qdistill.models (a package so test module names cannot clash with other folders)."""
