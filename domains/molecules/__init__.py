"""The ``molecules`` domain (issue 18): 3D small molecules (QM9, atoms H, C, N, O, F).

* :mod:`domains.molecules.data`: the QM9 loader (pip ``qm9pack``, EDM's split, cached arrays).
* :mod:`domains.molecules.metrics`: EDM's atom / molecule stability and the RDKit validity,
  uniqueness and novelty.
* :mod:`domains.molecules.io`: SDF and SMILES files (atomic writes, one-line errors on reading).

The submodules are imported on demand: importing the package needs neither qm9pack nor RDKit.
"""
