"""Building and installing the Debian and RPM packages, and the manual page."""
