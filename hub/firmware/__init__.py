"""Firmware roll-outs driven by the running hub."""
