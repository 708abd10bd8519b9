"""The one exception the testbed raises: a server that would not start, or a missing binary."""


class TestbedError(RuntimeError):
    """A testbed server failed to start or answer; the message carries the tail of its log."""

    __test__ = False  # not a pytest test class, despite the name
