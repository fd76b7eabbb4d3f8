"""End-to-end tests: two real libvirt hosts on one machine (see harness.py)."""
