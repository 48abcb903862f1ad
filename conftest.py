"""Loads the snplab pytest plugin for everything under this directory."""

pytest_plugins = ["snplab.pytest_plugin"]
