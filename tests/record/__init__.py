"""The recording service (refresh, record, watch) against libvirt's in-process test driver."""
