"""Files on disk: owner-only writes, the open-file limit, paths as lossless text."""
