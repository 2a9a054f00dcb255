"""saia-entrypoint: the forced command of the hub's SSH key on the login node.

Importing this package does nothing; see saia.entrypoint.main for the program.
"""
