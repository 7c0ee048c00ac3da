"""Searches over sampling schedules for a pretrained model.

* :mod:`workbench.search.boss`: BOSS (Nguyen et al. 2024), the Bellman-optimal K-step subset of
  a fine reference grid (:func:`boss_schedule`, :func:`boss_grid`).
"""
from .boss import (BossSearch, bellman_path, boss_grid, boss_schedule, boss_search, boss_search_domain, ddim_jump,
                   ddim_jump_coefficients, ddim_target_x0, jump_cost_matrix, reference_trajectories)

__all__ = ["BossSearch", "bellman_path", "boss_grid", "boss_schedule", "boss_search", "boss_search_domain", "ddim_jump",
           "ddim_jump_coefficients", "ddim_target_x0", "jump_cost_matrix", "reference_trajectories"]
