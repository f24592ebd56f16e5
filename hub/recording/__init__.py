"""The recording proxy: the hub terminates SSH for nodes in ``proxy`` mode."""
