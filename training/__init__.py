"""The parts of ``train.py``: configuration, checkpoints, distributed set-up and image grids.

``train.main(argv)`` is the entry point; :func:`training.checkpoint.load_model` rebuilds a
trained :class:`models.CoCosNet` from any checkpoint it writes.
"""
