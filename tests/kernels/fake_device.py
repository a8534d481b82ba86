"""A DeviceBackend for CPU tests of what runners compile and launch: memory is fake addresses, copies and syncs do
nothing, and nothing is loaded (a test's ``function`` returns the entry name instead of compiling)."""

from __future__ import annotations

from fuser.kernels.backend import DeviceBackend


class FakeDevice(DeviceBackend):
    def __init__(self) -> None:
        super().__init__()
        self.launches: list = []
        self.compiled_for: list = []
        self._next = 4096

    def _load_module(self, image):
        raise AssertionError

    def _get_function(self, module, entry):
        raise AssertionError

    def malloc(self, nbytes):
        self._next += 4096 + nbytes
        return self._next

    def free(self, ptr):
        pass

    def copy_htod(self, dst, src):
        pass

    def copy_dtoh(self, dst, src):
        pass

    def synchronize(self):
        pass
