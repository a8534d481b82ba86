"""The ``onnx-fuse`` command line: a thin click layer over :func:`fuser.optimize`."""
