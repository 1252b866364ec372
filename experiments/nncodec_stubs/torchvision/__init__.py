"""Stand-in for torchvision/cv2: NNCodec imports its dataset and model helpers at import time;
the int32-tensor coding path used by the benchmark never calls them."""
import sys, types


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


for _name in ["datasets", "transforms", "models", "ops", "io", "utils", "datasets.folder", "transforms.functional", "models.resnet"]:
    sys.modules[f"{__name__}.{_name}"] = _Module(f"{__name__}.{_name}")
sys.modules[__name__].__class__ = _Module
