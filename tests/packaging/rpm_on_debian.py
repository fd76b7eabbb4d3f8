"""Stand-ins for Fedora's pyproject-rpm-macros, so that psci-hook.spec builds a binary RPM here.

Debian's rpm package has rpmbuild but not the pyproject macros (nor python3-devel or
systemd-rpm-macros). rpm_on_debian.macros defines those macros to call this script, which does
what they do, in the simplest way: build the wheel with ``python3 -m build``, install it with
``installer`` into the buildroot (posix_prefix scheme: /usr/lib/python3.X/site-packages, /usr/bin),
list the package's files for ``%files -f``, and import the package from the buildroot.
What this does NOT reproduce is listed in test_rpm.py.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig


def sitelib() -> str:
    return sysconfig.get_path("purelib", "posix_prefix", {"base": "/usr", "platbase": "/usr"})


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "sitelib":
        print(sitelib())
    elif command == "wheel":
        (wheeldir,) = args
        subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                        "--outdir", wheeldir, "."], check=True, stdout=subprocess.DEVNULL)
    elif command == "install":
        from installer import install
        from installer.destinations import SchemeDictionaryDestination
        from installer.sources import WheelFile

        wheeldir, buildroot = args
        scheme = sysconfig.get_paths("posix_prefix", {"base": "/usr", "platbase": "/usr"})
        destination = SchemeDictionaryDestination(
            {k: v for k, v in scheme.items() if k in ("purelib", "platlib", "scripts", "data")},
            interpreter="/usr/bin/python3", script_kind="posix", destdir=buildroot)
        for wheel in glob.glob(os.path.join(wheeldir, "*.whl")):
            with WheelFile.open(wheel) as source:
                install(source, destination, {"INSTALLER": b"rpm\n"})
    elif command == "save-files":
        files_list, buildroot, *modules = args
        site = sitelib()
        with open(files_list, "w") as out:
            for module in modules:
                out.write(f"{site}/{module}/\n")
                for info in glob.glob(f"{buildroot}{site}/{module}-*.dist-info"):
                    out.write(f"{info[len(buildroot):]}/\n")
    elif command == "check-import":
        buildroot, *modules = args
        env = {**os.environ, "PYTHONPATH": buildroot + sitelib()}
        for module in modules:
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True, env=env)
    else:
        raise SystemExit(f"rpm_on_debian.py: unknown command {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
