"""The optional C extension; everything else is declared in pyproject.toml.

``imagenet_pack.read._jpegroi`` decodes only the region a crop needs with libjpeg-turbo. It is built when the
libjpeg-turbo headers are installed (Debian/Ubuntu: libjpeg-turbo8-dev or libjpeg62-turbo-dev; Fedora:
libjpeg-turbo-devel; conda: libjpeg-turbo) and skipped otherwise (``optional=True``): the package then
decodes with OpenCV only.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("imagenet_pack.read._jpegroi", ["imagenet_pack/read/_jpegroi.c"], libraries=["jpeg"],
                             extra_compile_args=["-O2"], optional=True)])
