"""psci-hook's test suite, one package: test modules import shared helpers absolutely, as
``from tests.helpers import REPO`` or ``from tests.e2e.harness import TwoHosts`` (pytest puts the
repository's top directory on sys.path, above this package)."""
