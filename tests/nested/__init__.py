"""Nested-kernel tests: real arm64 KVM inside qemu-system-aarch64 (see nested_harness.py)."""
