"""Segmentation methods: one file per method, each registered under the name of its file."""
