"""Stand-in for cv2 (see _stub.py)."""
from _stub import install

install(__name__)
