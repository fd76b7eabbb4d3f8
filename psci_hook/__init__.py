"""psci-hook: pre-flight check of arm64 KVM firmware registers for libvirt migrations."""

__version__ = "0.1.0"
