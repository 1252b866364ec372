"""Shared stand-in machinery for the torchvision and cv2 stubs: NNCodec imports its dataset and
model helpers at import time; the int32-tensor coding path used by the benchmark never calls them."""
import sys
import types


class _Meta(type):
    def __call__(cls, *args, **kwargs):  # any constructor call gives another stand-in
        return _Meta("instance", (), {})

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Meta(name, (), {})


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Meta(name, (), {})


def install(name: str) -> None:
    """Make module ``name`` (and the submodules NNCodec imports) return stand-ins for anything."""
    for sub in ["datasets", "transforms", "models", "ops", "io", "utils", "datasets.folder", "transforms.functional", "models.resnet"]:
        sys.modules[f"{name}.{sub}"] = _Module(f"{name}.{sub}")
    sys.modules[name].__class__ = _Module
