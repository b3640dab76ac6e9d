"""The network edge: the only package that imports pynetdicom."""
