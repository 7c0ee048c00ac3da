"""The ``molecules`` domain (issue 18): 3D small molecules (QM9, atoms H, C, N, O, F).

* :mod:`domains.molecules.data`: the QM9 loader (pip ``qm9pack``, EDM's split, cached arrays).
* :mod:`domains.molecules.metrics`: EDM's atom / molecule stability and the RDKit validity,
  uniqueness and novelty.
* :mod:`domains.molecules.io`: SDF and SMILES files (atomic writes, one-line errors on reading).
* :mod:`domains.molecules.nets`: the E(3)-equivariant backbones (EDM's EGNN on torch-geometric
  message passing, an e3nn tensor-product network), pure-torch radius / fully connected graphs.
* :mod:`domains.molecules.domain`: :class:`~domains.molecules.domain.MoleculesDomain`, EDM's
  ``[x, h]`` state under one VP schedule with the CoM constraint on the positions.

The submodules are imported on demand: importing the package needs neither qm9pack nor RDKit.
"""
