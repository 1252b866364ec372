"""Stand-in for torchvision (see _stub.py)."""
from _stub import install

install(__name__)
