"""The ``shapes`` domain (issue 19): 3D shapes as surface point clouds with normals.

* :mod:`domains.shapes.data`: real meshes read in place from installed packages (pip
  ``pymeshlab``'s sample meshes, the Debian ``assimp-testmodels`` when installed), procedural
  families with their parameters as labels (boxes, cylinders, tori, superquadrics, and chairs,
  tables and airplanes assembled from boxes and cylinders), area-weighted surface sampling with
  normals, augmentation, and :class:`~domains.shapes.data.ShapeDataset`.
* :mod:`domains.shapes.metrics`: Chamfer distance, exact EMD (Hungarian) and Sinkhorn EMD with
  certified bounds, the PointFlow / LION set metrics (1-NNA, COV, MMD under CD and EMD), and the
  parameter-recovery oracle of the procedural families.
* :mod:`domains.shapes.io`: PLY point clouds with normals and OBJ / PLY meshes (atomic writes,
  one-line errors on reading).
* :mod:`domains.shapes.nets`: :class:`~domains.shapes.nets.PointTransformer`, a
  permutation-equivariant point-cloud transformer (per-point embedding, no index positions,
  adaLN-Zero time and family-label conditioning, a null label for CFG).
* :mod:`domains.shapes.domain`: :class:`~domains.shapes.domain.ShapesDomain`, the domain plugin:
  class-conditional rectified flow (velocity prediction) on clouds ``[B, n_points, 3]``, set
  metrics against the test split, parameter-recovery fits, PLY / NPZ samples, a two-view plot.

The submodules are imported on demand: importing the package needs neither trimesh nor scipy
(the domain module imports torch and the workbench core).
"""
