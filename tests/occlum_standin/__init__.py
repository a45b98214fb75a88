"""Test fixture: a stand-in of the Occlum 0.31 toolchain image (NOT Occlum; see standin.py)."""
