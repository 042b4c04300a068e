"""The HTTP upscaling server (``adassr serve``): config, model registry, dynamic batcher, app.

Importing this package imports no web framework; :mod:`adassr.runtime.server.app` does.
"""
