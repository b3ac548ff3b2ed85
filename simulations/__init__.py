"""Flower apps and commands: the ServerApp and ClientApp, in-process simulation, comparison and
plots."""
